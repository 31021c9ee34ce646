//! The lab's short form: real Postfix and Dovecot in a namespace, attacked, slowgate
//! protecting them; fails if any verdict row fails. Root only; about a minute.

#[test]
fn the_lab_scenario_passes_every_verdict_row() {
    sg_tests::require_root();
    let rows = sg_tests::lab::run(sg_tests::lab::Options {
        quick: true,
        live: false,
    })
    .expect("run the lab");
    sg_tests::lab::print(&rows);
    let failed: Vec<&str> = rows.iter().filter(|r| !r.pass).map(|r| r.check).collect();
    assert!(failed.is_empty(), "failed rows: {failed:?}");
    assert_eq!(rows.len(), 16);
}
