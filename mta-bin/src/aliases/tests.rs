#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use super::*;

const MAILBOXES: &[&str] = &[
    "alice@x.test",
    "bob@x.test",
    "carol@x.test",
    "archive@x.test",
];

fn table(entries: &[(&str, &[&str])]) -> Aliases {
    Aliases::new(
        entries.iter().map(|(k, v)| (*k, v.to_vec())),
        DomainSet::new(["x.test", "old.test", "[192.0.2.1]"]),
        Some(
            MAILBOXES
                .iter()
                .map(|m| m.to_string())
                .collect::<HashSet<_>>(),
        ),
    )
    .unwrap()
    .recipient_delimiter("+")
}

#[test]
fn each_form_expands() {
    let t = table(&[
        (
            "sales@x.test",
            &["alice@x.test", "bob@x.test", "far@partner.test"],
        ),
        ("info@x.test", &["alice@x.test"]),
        ("@old.test", &["@x.test"]),
        ("team@x.test", &["sales@x.test", "carol@x.test"]),
        ("lit@[192.0.2.1]", &["alice@x.test"]),
    ]);
    let cases: &[(&str, &[&str])] = &[
        (
            "sales@x.test",
            &["alice@x.test", "bob@x.test", "far@partner.test"],
        ),
        (
            "SALES@X.TEST",
            &["alice@x.test", "bob@x.test", "far@partner.test"],
        ),
        ("info@x.test", &["alice@x.test"]),
        // A domain alias keeps the local part, then looks again.
        ("bob@old.test", &["bob@x.test"]),
        ("info@old.test", &["alice@x.test"]),
        // Recursive and de-duplicated.
        (
            "team@x.test",
            &[
                "alice@x.test",
                "bob@x.test",
                "far@partner.test",
                "carol@x.test",
            ],
        ),
        // Not aliases: themselves.
        ("alice@x.test", &["alice@x.test"]),
        ("someone@far.test", &["someone@far.test"]),
        ("postmaster@x.test", &["postmaster@x.test"]),
        ("lit@[192.0.2.1]", &["alice@x.test"]),
    ];
    for (address, expected) in cases {
        assert_eq!(t.expand(address).unwrap(), *expected, "{address}");
    }
    assert_eq!(
        t.expand("nobody@x.test"),
        Err(AliasError::UnknownRecipient("nobody@x.test".into()))
    );
    assert_eq!(
        t.expand("nobody@old.test"),
        Err(AliasError::UnknownRecipient("nobody@x.test".into()))
    );
}

#[test]
fn explicit_addresses_beat_the_catch_all() {
    let t = table(&[
        ("@x.test", &["carol@x.test"]),
        ("info@x.test", &["bob@x.test"]),
        ("postmaster@x.test", &["alice@x.test"]),
    ]);
    assert_eq!(t.expand("anything@x.test").unwrap(), ["carol@x.test"]);
    assert_eq!(t.expand("info@x.test").unwrap(), ["bob@x.test"]);
    assert_eq!(t.expand("alice@x.test").unwrap(), ["alice@x.test"]);
    // A sub-address of a mailbox is that mailbox's, not the catch-all's.
    assert_eq!(
        t.expand("alice+news@x.test").unwrap(),
        ["alice+news@x.test"]
    );
    // An explicit postmaster entry wins; abuse stays the usual mailbox.
    assert_eq!(t.expand("postmaster@x.test").unwrap(), ["alice@x.test"]);
    assert_eq!(t.expand("abuse@x.test").unwrap(), ["abuse@x.test"]);
}

#[test]
fn the_tag_follows_to_plain_local_mailboxes_only() {
    let t = table(&[
        (
            "robert@x.test",
            &["bob@x.test", "far@partner.test", "team@x.test"],
        ),
        ("team@x.test", &["carol@x.test"]),
    ]);
    assert_eq!(
        t.expand("robert+news@x.test").unwrap(),
        ["bob+news@x.test", "far@partner.test", "carol@x.test"]
    );
    assert!(t.is_alias("robert+news@x.test"));
    assert!(!t.is_alias("bob+news@x.test"));
}

#[test]
fn an_address_among_its_own_targets_is_final() {
    let t = table(&[("bob@x.test", &["bob@x.test", "archive@x.test"])]);
    assert_eq!(
        t.expand("bob@x.test").unwrap(),
        ["bob@x.test", "archive@x.test"]
    );
    // Not a mailbox: nowhere to deliver.
    let t = table(&[("ghost@x.test", &["ghost@x.test", "alice@x.test"])]);
    assert_eq!(
        t.expand("ghost@x.test"),
        Err(AliasError::UnknownRecipient("ghost@x.test".into()))
    );
}

#[test]
fn loops_without_a_way_out_are_refused_and_others_are_cut() {
    let t = table(&[
        ("a@x.test", &["b@x.test"]),
        ("b@x.test", &["a@x.test"]),
        ("c@x.test", &["d@x.test"]),
        ("d@x.test", &["c@x.test", "alice@x.test"]),
        ("@old.test", &["@x.test"]),
        ("@x.test", &["@old.test"]),
    ]);
    assert_eq!(
        t.expand("a@x.test"),
        Err(AliasError::Loop(vec![
            "a@x.test".into(),
            "b@x.test".into(),
            "a@x.test".into()
        ]))
    );
    assert_eq!(t.expand("c@x.test").unwrap(), ["alice@x.test"]);
    assert_eq!(t.expand("d@x.test").unwrap(), ["alice@x.test"]);
    assert!(matches!(t.expand("zz@old.test"), Err(AliasError::Loop(_))));
    assert_eq!(
        AliasError::Loop(Vec::new())
            .decision()
            .reply()
            .unwrap()
            .to_string()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>(),
        ["550", "5.4.6"]
    );
}

#[test]
fn depth_and_size_are_limited() {
    let chain: Vec<(String, Vec<String>)> = (0..12)
        .map(|i| (format!("l{i}@x.test"), vec![format!("l{}@x.test", i + 1)]))
        .chain([("l12@x.test".to_owned(), vec!["alice@x.test".to_owned()])])
        .collect();
    let t = Aliases::new(
        chain,
        DomainSet::new(["x.test"]),
        Some(MAILBOXES.iter().map(|m| m.to_string()).collect()),
    )
    .unwrap();
    // l3 → l4 → ... → l12 → alice: ten levels.
    assert_eq!(t.expand("l3@x.test").unwrap(), ["alice@x.test"]);
    assert!(matches!(t.expand("l2@x.test"), Err(AliasError::TooDeep(c)) if c.len() == 11));
    let t = t.max_depth(20);
    assert_eq!(t.expand("l0@x.test").unwrap(), ["alice@x.test"]);

    let many: Vec<String> = (0..5).map(|i| format!("u{i}@far.test")).collect();
    let t = Aliases::new([("list@x.test", many)], DomainSet::new(["x.test"]), None)
        .unwrap()
        .max_expansion(4);
    assert_eq!(t.expand("list@x.test"), Err(AliasError::TooMany(4)));
}

#[test]
fn diamonds_expand_once() {
    // Each level points twice to the next: without memory, 2^30 walks.
    let entries: Vec<(String, Vec<String>)> = (0..30)
        .map(|i| {
            let next = format!("n{}@x.test", i + 1);
            (
                format!("n{i}@x.test"),
                vec![next.clone(), next.to_uppercase()],
            )
        })
        .collect();
    let t = Aliases::new(entries, DomainSet::new(["x.test"]), None)
        .unwrap()
        .max_depth(40);
    assert_eq!(t.expand("n0@x.test").unwrap(), ["n30@x.test"]);
}

#[test]
fn bad_entries_are_refused() {
    let local = DomainSet::new(["x.test"]);
    for (key, targets, why) in [
        (
            "far@other.test",
            vec!["a@x.test"],
            "not one of [local] domains",
        ),
        ("no-at", vec!["a@x.test"], "not an address"),
        ("@", vec!["a@x.test"], "not an address"),
        ("a@x.test", vec![], "no target"),
        ("a@x.test", vec!["not an address"], "is no address"),
        ("a@x.test", vec!["@bad domain"], "is no @domain"),
    ] {
        let e = Aliases::new([(key, targets)], local.clone(), None).unwrap_err();
        assert!(e.to_string().contains(why), "{key}: {e}");
    }
}

#[test]
fn the_data_stage_rewrites_the_envelope_with_orcpt() {
    let t = Arc::new(table(&[
        ("sales@x.test", &["alice@x.test", "far@partner.test"]),
        ("info@x.test", &["alice@x.test"]),
    ]));
    let to = |a: &str, orcpt: Option<&str>| Recipient {
        to: ForwardPath::parse(&format!("<{a}>")).unwrap(),
        params: RcptParameters {
            notify: Some(smtp_proto::Notify::FAILURE),
            orcpt: orcpt.map(|o| OriginalRecipient {
                addr_type: "rfc822".into(),
                address: o.into(),
            }),
        },
    };
    let envelope = smtp_proto::Envelope {
        from: smtp_proto::ReversePath::parse("<z@far.test>").unwrap(),
        params: Default::default(),
        recipients: vec![
            to("sales@x.test", None),
            to("info@x.test", Some("first@elsewhere.test")),
            to("bob@x.test", None),
        ],
    };
    let mut request = DataRequest::new(
        Arc::new(smtp_server::SessionInfo::local("test")),
        envelope,
        smtp_server::Content::from(b"Subject: x\r\n\r\nx\r\n".to_vec()),
        smtp_server::Notes::default(),
    );
    assert!(t.data_check().check(&mut request).is_none());
    let got: Vec<(String, Option<String>)> = request
        .envelope
        .recipients
        .iter()
        .map(|r| {
            assert_eq!(r.params.notify, Some(smtp_proto::Notify::FAILURE));
            (
                r.to.to_string(),
                r.params.orcpt.as_ref().map(|o| o.address.clone()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("<alice@x.test>".into(), Some("sales@x.test".into())),
            ("<far@partner.test>".into(), Some("sales@x.test".into())),
            // alice again (from info) is left out; bob is no alias.
            ("<bob@x.test>".into(), None),
        ]
    );
}

#[test]
fn srs_addresses_are_checked_at_rcpt_and_reversed_at_data() {
    let srs = Srs::new(b"k", "x.test");
    let t = Arc::new(table(&[]).srs(srs.clone()));
    let bounce = srs.forward("alice@origin.test", srs::today()).unwrap();
    let mailbox = Mailbox::parse(&bounce).unwrap();
    assert_eq!(
        t.reverse_srs(&mailbox),
        Some(Ok("alice@origin.test".to_owned()))
    );
    let forged = Mailbox::parse(&bounce.replacen("alice", "eve", 1)).unwrap();
    assert_eq!(t.reverse_srs(&forged), Some(Err(SrsError::BadHash)));
    // Elsewhere: no SRS address of ours.
    let other = Mailbox::parse(&bounce.replace("@x.test", "@old.test")).unwrap();
    assert_eq!(t.reverse_srs(&other), None);
}
