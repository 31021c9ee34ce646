//! `[ceiling]`: the default rate ceilings and the concurrent-connection caps.

use super::{
    error::{key_bail, key_error},
    raw::{RawBucket, RawCeiling, RawConcurrent},
    validate::check_burst,
};
use crate::domain::Rate;

/// `[ceiling]`: the default ceilings per source and per prefix.
#[allow(clippy::type_complexity)]
pub(super) fn ceilings(
    raw: RawCeiling,
) -> anyhow::Result<(Option<(Rate, u32)>, Option<(Rate, u32)>)> {
    let bucket = |key: &str, b: Option<RawBucket>| -> anyhow::Result<Option<(Rate, u32)>> {
        match b {
            None => Ok(None),
            Some(b) => {
                let rate: Rate = b
                    .rate
                    .parse()
                    .map_err(|e| key_error!(format!("{key}.rate"), "{e:#}"))?;
                check_burst(&format!("{key}.burst"), b.burst)?;
                Ok(Some((rate, b.burst)))
            }
        }
    };
    Ok((
        bucket("ceiling.source", raw.source)?,
        bucket("ceiling.prefix", raw.prefix)?,
    ))
}

/// The largest concurrent-connection cap (a cap that never bites is a typo).
const MAX_CONCURRENT: u32 = 1_000_000;

/// `[ceiling.concurrent]`: None without the table.
pub(super) fn concurrent(
    raw: Option<&RawConcurrent>,
) -> anyhow::Result<Option<crate::enforcer::ConcurrentCaps>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    for (key, value) in [
        ("source", raw.source),
        ("prefix", raw.prefix),
        ("limited", raw.limited),
    ] {
        if value > MAX_CONCURRENT {
            key_bail!(
                format!("ceiling.concurrent.{key}"),
                "{value} is above {MAX_CONCURRENT}"
            );
        }
    }
    if raw.source == 0 && raw.prefix == 0 {
        key_bail!(
            format!("ceiling.concurrent"),
            "set `source`, `prefix` or both (or remove the table)"
        );
    }
    if let Some(dir) = &raw.cgroup
        && !dir.is_absolute()
    {
        key_bail!(
            format!("ceiling.concurrent.cgroup"),
            "{} is not absolute",
            dir.display()
        );
    }
    Ok(Some(crate::enforcer::ConcurrentCaps {
        source: raw.source,
        prefix: raw.prefix,
        limited: raw.limited,
        cgroup: raw.cgroup.clone(),
    }))
}
