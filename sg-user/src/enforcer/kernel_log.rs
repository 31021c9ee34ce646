//! Kernel diagnostics (`[log] kernel = true`): the XDP program's aya-log records (parse
//! errors, unusual packet shapes, each refusal), read from every program attached on the
//! protected interfaces, the one loaded now or one kept from an earlier run, and written into
//! the daemon's log as `kernel: ...` lines (at most 50 a second, like every call site).

use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;

/// Writes each record into the daemon's log.
struct IntoTracing;

impl log::Log for IntoTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        tracing::info!("kernel: {}", record.args());
    }

    fn flush(&self) {}
}

/// Starts a reader for each program attached on `interfaces` (on the current tokio runtime).
/// A program without log records (an older build) is skipped, and said.
pub fn forward_kernel_log(pin_dir: &Path, interfaces: &[String]) {
    let mut seen = Vec::new();
    for iface in interfaces {
        let program = PinnedLink::from_pin(super::program::link_pin(pin_dir, iface))
            .map(FdLink::from)
            .and_then(|link| link.info())
            .map(|info| info.program_id());
        let Ok(id) = program else {
            tracing::warn!("{iface}: no pinned program to read kernel diagnostics from");
            continue;
        };
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        match EbpfLogger::init_from_id_with_logger(id, IntoTracing) {
            Ok(logger) => {
                // SAFETY: the logger owns its ring buffer's descriptor, open and the same for as
                // long as the logger lives, and the AsyncFd owns the logger.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let Ok(mut fd) = registered else {
                    tracing::warn!("kernel diagnostics: cannot wait on the program's records");
                    continue;
                };
                tokio::spawn(async move {
                    loop {
                        let Ok(mut ready) = fd.readable_mut().await else {
                            return;
                        };
                        ready.get_inner_mut().flush();
                        ready.clear_ready();
                    }
                });
            }
            Err(e) => tracing::warn!("kernel diagnostics of program {id}: {e}"),
        }
    }
}
