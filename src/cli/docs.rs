//! Documentation generated from the command line's own definitions: shell completions and
//! manual pages, so they can never disagree with the flags cairn accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::args::Cli;
use crate::error::Error;

/// Prints the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "cairn", &mut std::io::stdout());
}

/// Writes the manual pages: `cairn.1` to stdout, or, with `dir`, `cairn.1` and one page per
/// subcommand (`cairn-run.1`, `cairn-auth-bootstrap.1`, …) into that directory.
///
/// # Errors
/// [`Error::Io`] naming the page that could not be written.
pub fn man(dir: Option<&Path>) -> Result<(), Error> {
    let command = Cli::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        return render(&command, &mut out).map_err(|source| Error::Io {
            what: "writing the manual page".to_string(),
            source,
        });
    };
    // Breadth first: each page is named after its path of commands, `cairn-auth-bootstrap`.
    let mut pages = vec![(command.get_name().to_string(), command.clone())];
    let mut i = 0;
    while i < pages.len() {
        let (name, cmd) = pages[i].clone();
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let page = format!("{name}-{}", sub.get_name());
            let typed = page.replace('-', " ");
            let sub = sub
                .clone()
                .display_name(page.clone())
                .bin_name(typed)
                .version(env!("CARGO_PKG_VERSION"));
            pages.push((page, sub));
        }
        i += 1;
    }
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        let written = std::fs::File::create(&path).and_then(|mut f| {
            render(&cmd, &mut f)?;
            f.flush()
        });
        written.map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        println!("{}", path.display());
    }
    Ok(())
}

fn render(command: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(command.clone()).render(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        man(Some(dir.path())).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for page in [
            "cairn.1",
            "cairn-run.1",
            "cairn-check.1",
            "cairn-auth-bootstrap.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("cairn-run.1")).unwrap();
        assert!(run.contains("shutdown\\-grace"), "{run}");
    }
}
