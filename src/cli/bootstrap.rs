//! `cairn auth bootstrap`: least privilege on the registry prefix, set up idempotently. A role
//! that reads it (for proxies), one that reads and writes it (for registrars), a user of each
//! with a password kept in a file only root can read, and optionally auth itself.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use etcd_client::{AuthClient, Permission, PermissionType};
use rand::RngExt;

use super::args::BootstrapArgs;
use crate::error::Error;
use crate::etcd::{Etcd, EtcdError, EtcdMetrics};
use crate::registry::prefix_end;

/// Characters in a generated password: enough entropy for an etcd account at 32 of them.
const PASSWORD_LEN: usize = 32;

/// What a step did, in one line.
fn say(line: String) {
    println!("{line}");
}

fn call(what: &str, e: etcd_client::Error) -> Error {
    Error::EtcdCall {
        what: what.to_string(),
        source: EtcdError::from(e),
    }
}

/// Sets up the roles, users and passwords; see the module documentation.
///
/// # Errors
/// When etcd cannot be reached, refuses the root user, or a password file cannot be written.
pub async fn bootstrap(args: BootstrapArgs) -> Result<(), Error> {
    let config = args.etcd.resolve()?;
    let mut etcd = Etcd::connect(&config, EtcdMetrics::default()).await?;
    let enabled = match etcd.authenticate().await {
        Ok(()) => config.credentials.is_some(),
        Err(e) if e.to_string().contains("authentication is not enabled") => false,
        Err(e) => return Err(Error::Etcd(e)),
    };
    let mut auth = etcd.client().auth_client();
    if config.credentials.is_none() {
        // Without a user, only an etcd without auth answers: find out which this is.
        auth.role_list().await.map_err(|e| {
            Error::Usage(format!(
                "etcd refuses an anonymous client ({}): give --username root --password-file FILE",
                EtcdError::from(e)
            ))
        })?;
    }
    let prefix = config.prefix.to_string();
    for (role, perm, what) in [
        (&args.proxy_user, PermissionType::Read, "read"),
        (&args.registrar_user, PermissionType::Readwrite, "readwrite"),
    ] {
        ensure_role(&mut auth, role, perm, what, &prefix).await?;
        ensure_user(&mut auth, role, &args.password_dir).await?;
    }
    if enabled {
        say("auth is already enabled".to_string());
    } else if args.enable_auth {
        let Some(root) = &config.credentials else {
            return Err(Error::Usage(
                "--enable-auth needs --username root and --password-file FILE".to_string(),
            ));
        };
        if root.username != "root" {
            return Err(Error::Usage(format!(
                "--enable-auth needs --username root (etcd's auth needs that user), not {:?}",
                root.username
            )));
        }
        match auth.user_get("root").await {
            Ok(_) => say("user root already exists".to_string()),
            Err(_) => {
                auth.user_add("root", root.password.expose(), None)
                    .await
                    .map_err(|e| call("creating user root", e))?;
                say("created user root (password from --password-file)".to_string());
            }
        }
        grant_role(&mut auth, "root", "root").await?;
        auth.auth_enable()
            .await
            .map_err(|e| call("enabling auth", e))?;
        say("enabled auth".to_string());
    } else {
        say("auth is disabled on this etcd: the roles and users exist but nothing enforces them (run again with --enable-auth)".to_string());
    }
    Ok(())
}

async fn ensure_role(
    auth: &mut AuthClient,
    role: &str,
    perm: PermissionType,
    what: &str,
    prefix: &str,
) -> Result<(), Error> {
    let existing = match auth.role_get(role).await {
        Ok(r) => r.permissions(),
        Err(_) => {
            auth.role_add(role)
                .await
                .map_err(|e| call(&format!("creating role {role}"), e))?;
            say(format!("created role {role}"));
            Vec::new()
        }
    };
    let end = prefix_end(prefix.as_bytes());
    let granted = existing.iter().any(|p| {
        p.key() == prefix.as_bytes()
            && p.range_end() == end.as_slice()
            && p.get_type() == perm as i32
    });
    if granted {
        say(format!("role {role} already grants {what} on {prefix}"));
        return Ok(());
    }
    auth.role_grant_permission(role, Permission::new(perm, prefix).with_prefix())
        .await
        .map_err(|e| call(&format!("granting {what} on {prefix} to role {role}"), e))?;
    say(format!("granted role {role} {what} on {prefix}"));
    Ok(())
}

/// Makes sure `user` exists with the password of its file and holds role `user`.
async fn ensure_user(auth: &mut AuthClient, user: &str, dir: &Path) -> Result<(), Error> {
    let file = dir.join(format!("{user}.password"));
    let from_file = match std::fs::read_to_string(&file) {
        Ok(p) => Some(p.trim_end_matches(['\n', '\r']).to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io {
                what: format!("reading {}", file.display()),
                source,
            })
        }
    };
    let exists = auth.user_get(user).await.is_ok();
    match (exists, from_file) {
        (true, Some(_)) => say(format!("user {user} already exists")),
        (false, Some(password)) => {
            auth.user_add(user, password, None)
                .await
                .map_err(|e| call(&format!("creating user {user}"), e))?;
            say(format!(
                "created user {user} with the password in {}",
                file.display()
            ));
        }
        (exists, None) => {
            let password: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(PASSWORD_LEN)
                .map(char::from)
                .collect();
            write_secret(&file, &password)?;
            if exists {
                auth.user_change_password(user, password)
                    .await
                    .map_err(|e| call(&format!("setting the password of user {user}"), e))?;
                say(format!(
                    "user {user} had no password file: set a new password, in {}",
                    file.display()
                ));
            } else {
                auth.user_add(user, password, None)
                    .await
                    .map_err(|e| call(&format!("creating user {user}"), e))?;
                say(format!(
                    "created user {user} with a generated password, in {}",
                    file.display()
                ));
            }
        }
    }
    grant_role(auth, user, user).await
}

async fn grant_role(auth: &mut AuthClient, user: &str, role: &str) -> Result<(), Error> {
    let has = auth
        .user_get(user)
        .await
        .map(|u| u.roles().iter().any(|r| r == role))
        .unwrap_or(false);
    if has {
        say(format!("user {user} already has role {role}"));
        return Ok(());
    }
    auth.user_grant_role(user, role)
        .await
        .map_err(|e| call(&format!("granting role {role} to user {user}"), e))?;
    say(format!("granted role {role} to user {user}"));
    Ok(())
}

/// Writes `secret` to a new file only its owner can read.
fn write_secret(path: &Path, secret: &str) -> Result<(), Error> {
    let io = |source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(secret.as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)
}
