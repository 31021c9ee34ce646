use super::*;
use sg_common::service;

fn parse(text: &str) -> anyhow::Result<Config> {
    Config::parse(text, Path::new("/etc/slowgate/test.toml"))
}

#[test]
fn the_shipped_default_config_is_accepted() {
    let text = include_str!("../../../config/slowgate.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.interfaces, ["eth0"]);
    assert_eq!(c.ports.len(), 7);
    assert_eq!(c.ports[&587], service::SUBMISSION);
}

#[test]
fn one_line_config_gets_the_defaults() {
    let c = parse("interfaces = [\"eth0\"]").unwrap();
    assert_eq!(c.attach_mode, AttachMode::Auto);
    assert_eq!(c.prefix_v4, 24);
    assert_eq!(c.prefix_v6, 64);
    assert!(c.source_ceiling.is_some());
    let k = c.kernel_config();
    assert_eq!(k.prefix_len_v4, 120);
    assert_eq!(k.source_ceiling.interval_ns, 200_000_000);
}

#[test]
fn unknown_keys_are_errors_naming_file_line_and_key() {
    let err = parse("interfaces = [\"eth0\"]\n\n[ports]\nsmpt = [25]\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/etc/slowgate/test.toml:4"), "{msg}");
    assert!(msg.contains("smpt"), "{msg}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("attach_mode = \"turbo\"", "attach_mode"),
        (
            "[ceiling.source]\nrate = \"fast\"\nburst = 3",
            "ceiling.source.rate",
        ),
        (
            "[ceiling.source]\nrate = \"1/s\"\nburst = 0",
            "ceiling.source.burst",
        ),
        ("[prefix]\nipv4 = 40\nipv6 = 64", "prefix.ipv4"),
        ("[lists]\ndeny = [\"300.1.1.1\"]", "lists.deny"),
        (
            "[lists]\nlimit = [{ network = \"203.0.113.0/24\" }]",
            "lists.limit",
        ),
        (
            "[ports]\nsmtp = [25]\nsubmission = [25]\npop3 = []\nimap = []",
            "ports.submission",
        ),
        ("[points]\nhalf_life = \"soon\"", "points.half_life"),
        ("[points.weights]\nrbl = \"x\"", "rbl"),
        ("[points.weights]\nphishing = 1.0", "phishing"),
        (
            "[[levels]]\npoints = 20\nblock = true\n[[levels]]\npoints = 10\nblock = true",
            "levels[1].points",
        ),
        ("[[levels]]\npoints = 20\nrate = \"1/s\"", "levels[0]"),
        ("[[sources]]\nformat = \"auto\"", "sources[0]"),
        (
            "[[sources]]\npath = \"/var/log/x\"\nformat = \"lotus\"",
            "sources[0].format",
        ),
        (
            "[countries]\ndatabase = \"/x.mmdb\"\nmultipliers = { Germany = 2.0 }",
            "countries.multipliers.Germany",
        ),
        (
            "[countries]\nmultipliers = { DE = 2.0 }",
            "countries.database",
        ),
        // Numbers that used to pass and wedge or crash the daemon later.
        (
            "[enforcement]\nsweep_interval = \"0s\"",
            "enforcement.sweep_interval",
        ),
        ("[points.weights]\nrbl = nan", "points.weights.rbl"),
        (
            "[points.weights]\nauth_failure = inf",
            "points.weights.auth_failure",
        ),
        ("[points.weights]\nbounce = -1.0", "points.weights.bounce"),
        ("[points]\nstep_down_below = 0.0", "points.step_down_below"),
        ("[points]\nstep_down_below = nan", "points.step_down_below"),
        ("[points]\nhalf_life = \"0s\"", "points.half_life"),
        ("[points]\nhalf_life = \"100000d\"", "points.half_life"),
        ("[points]\nmin_hold = \"1000000d\"", "points.min_hold"),
        ("[points]\nlimit_ttl = \"99999999d\"", "points.limit_ttl"),
        (
            "[points]\nmax_tracked = 9223372036854775807",
            "points.max_tracked",
        ),
        ("[[levels]]\npoints = inf\nblock = true", "levels[0].points"),
        ("[[levels]]\npoints = nan\nblock = true", "levels[0].points"),
        (
            "[countries]\ndatabase = \"/x.mmdb\"\nmultipliers = { DE = inf }",
            "countries.multipliers.DE",
        ),
        (
            "[[dnsbl]]\nzone = \"bad zone\"\nweights = { \"127.0.0.2\" = 5 }",
            "dnsbl[0].zone",
        ),
        (
            "[[dnsbl]]\nzone = \"bl.example\"\nweights = { \"two\" = 5 }",
            "dnsbl[0].weights",
        ),
        (
            "[dns]\nresolver = \"nowhere\"\n[[dnsbl]]\nzone = \"bl.example\"\nweights = { \"127.0.0.2\" = 5 }",
            "dns.resolver",
        ),
        ("[ceiling.concurrent]\nlimited = 5", "ceiling.concurrent"),
        (
            "[ceiling.concurrent]\nsource = 2000000",
            "ceiling.concurrent.source",
        ),
        (
            "[ceiling.concurrent]\nsource = 20\ncgroup = \"sys/fs/cgroup\"",
            "ceiling.concurrent.cgroup",
        ),
        (
            "[[feeds]]\nname = \"a b\"\npath = \"/f\"\nformat = \"plain\"\naction = \"deny\"",
            "feeds[0].name",
        ),
        (
            "[[feeds]]\nname = \"f\"\nurl = \"ftp://x/y\"\nformat = \"plain\"\naction = \"deny\"",
            "feeds[0].url",
        ),
        (
            "[[feeds]]\nname = \"f\"\npath = \"/f\"\nformat = \"csv\"\naction = \"deny\"",
            "feeds[0].format",
        ),
        (
            "[[feeds]]\nname = \"f\"\npath = \"/f\"\nformat = \"plain\"\naction = \"deny\"\npoints = 5.0",
            "feeds[0].action",
        ),
        (
            "[[feeds]]\nname = \"f\"\npath = \"/f\"\nformat = \"plain\"\nrate = \"often\"",
            "feeds[0].rate",
        ),
        (
            "[[feeds]]\nname = \"f\"\npath = \"/f\"\nformat = \"plain\"\naction = \"deny\"\nmax_age = \"1m\"",
            "feeds[0].max_age",
        ),
        (
            "[[feeds]]\nname = \"f\"\npath = \"/f\"\nformat = \"plain\"\naction = \"deny\"\nwidest_v4 = 0",
            "feeds[0].widest_v4",
        ),
    ];
    for (body, key) in cases {
        let text = format!("interfaces = [\"eth0\"]\n{body}\n");
        let msg = format!("{:#}", parse(&text).unwrap_err());
        assert!(msg.contains(key), "{key}: {msg}");
        assert!(msg.contains("test.toml:"), "{msg}");
        // The line named is the one that sets the key (or its table).
        let line: usize = msg
            .split_once("test.toml:")
            .and_then(|(_, r)| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number in: {msg}"));
        let named = text.lines().nth(line - 1).unwrap_or("");
        let last = key.rsplit('.').next().unwrap_or(key);
        let last = last.split('[').next().unwrap_or(last);
        assert!(
            named.contains(last) || named.starts_with('['),
            "{key}: line {line} is `{named}`: {msg}"
        );
    }
}

#[test]
fn missing_interfaces_is_an_error() {
    assert!(parse("attach_mode = \"skb\"").is_err());
    assert!(parse("interfaces = []").is_err());
}
