//! The `[service.outlier]` table: when passive ejection takes an instance out, and for how long.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::field::{duration, within, FieldResult, HumanDuration, Key};
use crate::health::config::MAX_IN_A_ROW;
use crate::snapshot::Outlier;

/// Ejections shorter than a second are noise; longer than a day, an instance is as good as gone.
const EJECTION_TIME: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

/// A `[service.outlier]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    consecutive_failures: Option<Spanned<u64>>,
    consecutive_5xx: Option<Spanned<u64>>,
    base_ejection_time: Option<Spanned<HumanDuration>>,
    max_ejection_time: Option<Spanned<HumanDuration>>,
    max_ejection_percent: Option<Spanned<u64>>,
}

impl RawOutlier {
    /// The ejection rules; `key` is `service[i].outlier`.
    pub(crate) fn validate(&self, key: &Key) -> FieldResult<Outlier> {
        let d = Outlier::default();
        let count = |value: &Option<Spanned<u64>>, field: &str, default: u32| {
            within(
                value.as_ref(),
                &key.field(field),
                0..MAX_IN_A_ROW + 1,
                default.into(),
            )
            .map(|n| n as u32)
        };
        let base = duration(
            self.base_ejection_time.as_ref(),
            &key.field("base_ejection_time"),
            EJECTION_TIME,
            Duration::from_millis(d.base_ejection_ms),
        )?;
        let max = duration(
            self.max_ejection_time.as_ref(),
            &key.field("max_ejection_time"),
            EJECTION_TIME,
            Duration::from_millis(d.max_ejection_ms).max(base),
        )?;
        if max < base {
            let span = self.max_ejection_time.as_ref().map(Spanned::span);
            return Err(key.field("max_ejection_time").error(
                span,
                format!(
                    "max_ejection_time ({}) is shorter than base_ejection_time ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(base)
                ),
            ));
        }
        Ok(Outlier {
            consecutive_failures: count(
                &self.consecutive_failures,
                "consecutive_failures",
                d.consecutive_failures,
            )?,
            consecutive_5xx: count(&self.consecutive_5xx, "consecutive_5xx", d.consecutive_5xx)?,
            base_ejection_ms: base.as_millis() as u64,
            max_ejection_ms: max.as_millis() as u64,
            max_ejection_percent: within(
                self.max_ejection_percent.as_ref(),
                &key.field("max_ejection_percent"),
                0..101,
                d.max_ejection_percent.into(),
            )? as u32,
        })
    }
}
