//! `cargo xtask lab`: real Postfix and Dovecot under attack, slowgate protecting them.

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    sg_tests::lab::install_interrupt_handler();
    let rows = sg_tests::lab::run(sg_tests::lab::Options { quick, live: true })?;
    sg_tests::lab::print(&rows);
    let failed = rows.iter().filter(|r| !r.pass).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} verdict rows failed", rows.len());
    }
    println!("\nall {} verdict rows passed", rows.len());
    Ok(())
}
