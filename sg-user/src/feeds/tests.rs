use std::time::Duration;

use super::*;

fn feed(name: &str, origin: Origin, action: Action) -> Feed {
    Feed {
        name: name.into(),
        origin,
        format: Format::Plain,
        action,
        refresh: Duration::from_secs(3600),
        max_age: Duration::from_secs(2 * 86_400),
        max_change: 0.5,
        widest_v4: 8,
        widest_v6: 19,
        timeout: Duration::from_secs(5),
        max_bytes: 1 << 20,
    }
}

fn copy(text: &str) -> formats::Copy {
    formats::parse(Format::Plain, text, 0).unwrap()
}

fn many(n: usize) -> String {
    (0..n).map(|i| format!("198.51.100.{i}\n")).collect()
}

#[test]
fn the_guards_refuse_wide_entries_and_sudden_changes() {
    let f = feed("f", Origin::Path("/nonexistent".into()), Action::Deny);
    assert!(guard(&f, None, &copy("10.0.0.0/8\n2001:db8::/32\n")).is_ok());
    let e = guard(&f, None, &copy("0.0.0.0/0\n")).unwrap_err();
    assert!(e.to_string().contains("wider than /8"), "{e}");
    assert!(guard(&f, None, &copy("2001::/16\n")).is_err());
    // 20 -> 40 doubles: refused; 20 -> 29 is within half.
    assert!(guard(&f, Some(20), &copy(&many(40))).is_err());
    assert!(guard(&f, Some(20), &copy(&many(29))).is_ok());
    let e = guard(&f, Some(20), &copy("")).unwrap_err();
    assert!(e.to_string().contains("shrink from 20 to 0"), "{e}");
    // Small lists change freely; the first copy has nothing to compare with.
    assert!(guard(&f, Some(4), &copy(&many(8))).is_ok());
    assert!(guard(&f, None, &copy(&many(200))).is_ok());
}

#[test]
fn points_feeds_score_an_address_once_when_first_seen() {
    let (_send, sets) = std::sync::mpsc::sync_channel(4);
    let mut feeds = Feeds {
        sets,
        points: HashMap::new(),
        scored: HashSet::new(),
    };
    let listed: IpAddr = "198.51.100.77".parse().unwrap();
    assert_eq!(feeds.seen(listed), None, "no points feed yet");
    feeds.scored.clear();
    _send
        .send(FeedSet {
            name: "a".into(),
            action: Action::Points(20.0),
            networks: copy("198.51.100.0/24\n2001:db8:66::/48\n").networks,
            ttl: Duration::from_secs(60),
        })
        .unwrap();
    _send
        .send(FeedSet {
            name: "b".into(),
            action: Action::Points(5.0),
            networks: copy("198.51.100.77\n").networks,
            ttl: Duration::from_secs(60),
        })
        .unwrap();
    assert_eq!(feeds.arrived().len(), 2);
    assert_eq!(feeds.seen(listed), Some(25.0));
    assert_eq!(feeds.seen(listed), None, "scored once");
    assert_eq!(feeds.seen("2001:db8:66::9".parse().unwrap()), Some(20.0));
    assert_eq!(feeds.seen("203.0.113.1".parse().unwrap()), None);
    assert_eq!(feeds.seen("2001:db8:67::9".parse().unwrap()), None);
}

/// A fresh state directory under the target directory (removed by the test).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-feeds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_file_feed_is_applied_kept_refused_and_restored() {
    let dir = scratch("file");
    let list = dir.join("list.txt");
    std::fs::write(&list, many(20)).unwrap();
    let f = feed("local", Origin::Path(list.clone()), Action::Deny);
    let (send, sets) = std::sync::mpsc::sync_channel(16);
    let mut fetcher = Fetcher::new(vec![f.clone()], dir.join("feeds"), send.clone(), None);
    std::fs::create_dir_all(dir.join("feeds")).unwrap();
    assert_eq!(fetcher.check(0).unwrap(), "20 entries (+20 -0)");
    assert_eq!(sets.try_recv().unwrap().networks.len(), 20);
    // Unchanged file: confirmed, the same set sent again (fresh TTLs).
    assert_eq!(fetcher.check(0).unwrap(), "not modified (20 entries)");
    assert_eq!(sets.try_recv().unwrap().networks.len(), 20);
    // A doubled list is refused; nothing is sent; the old copy stays.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&list, many(40)).unwrap();
    let e = fetcher.check(0).unwrap_err();
    assert!(format!("{e:#}").contains("grow from 20 to 40"), "{e:#}");
    assert!(sets.try_recv().is_err());
    // A garbled copy is refused whole.
    std::fs::write(&list, format!("{}198.51.1", many(19))).unwrap();
    assert!(fetcher.check(0).is_err());
    assert!(sets.try_recv().is_err());
    // A restart enforces the last good copy from disk before any fetch.
    let _restarted = Fetcher::new(vec![f], dir.join("feeds"), send, None);
    assert_eq!(sets.try_recv().unwrap().networks.len(), 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_copy_unconfirmed_for_max_age_is_withdrawn() {
    let dir = scratch("stale");
    let list = dir.join("list.txt");
    std::fs::write(&list, many(3)).unwrap();
    std::fs::create_dir_all(dir.join("feeds")).unwrap();
    let f = feed("old", Origin::Path(list), Action::Deny);
    let (send, sets) = std::sync::mpsc::sync_channel(16);
    let mut fetcher = Fetcher::new(vec![f], dir.join("feeds"), send, None);
    fetcher.check(0).unwrap();
    assert_eq!(sets.try_recv().unwrap().networks.len(), 3);
    assert!(!fetcher.stale(0));
    fetcher.metas[0].checked_unix -= 3 * 86_400;
    assert!(fetcher.stale(0));
    fetcher.withdraw(0);
    assert!(sets.try_recv().unwrap().networks.is_empty());
    // Past an rbldnsd expiry, too.
    fetcher.metas[0].checked_unix = unix_now();
    fetcher.metas[0].expires_unix = Some(unix_now() - 1);
    assert!(fetcher.stale(0));
    let _ = std::fs::remove_dir_all(&dir);
}
