//! Sub-addressing (`[local] recipient_delimiter`, `subaddress_folder`) through the real
//! `mta` binary: `bob+news@` is `bob`'s, in INBOX or in the folder `.news`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::{
    assert_config_ok, config_file, maildir_files, rcpt_reply, run_with, serve, smtp_send, terminate,
};

const BOB: &str = "mailboxes = [\"bob@mx.test\"]\n";

fn send(addr: &str, to: &str, subject: &str) {
    smtp_send(
        addr,
        "me@client.test",
        &[to],
        &format!("Subject: {subject}\r\n\r\nhi\r\n"),
    );
}

fn make_folder(dir: &Path, user: &str, folder: &str) {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(
            dir.join("maildir/mx.test")
                .join(user)
                .join(folder)
                .join(sub),
        )
        .unwrap();
    }
}

#[test]
fn a_subaddress_of_a_known_mailbox_lands_in_its_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&config_file(dir.path(), BOB));
    assert!(rcpt_reply(&addr, "bob+news@mx.test").starts_with("250 "));
    assert!(rcpt_reply(&addr, "Bob+News@mx.test").starts_with("250 "));
    assert!(rcpt_reply(&addr, "eve+news@mx.test").starts_with("550 5.1.1 "));
    assert!(rcpt_reply(&addr, "+news@mx.test").starts_with("550 5.1.1 "));
    assert!(rcpt_reply(&addr, "bob-news@mx.test").starts_with("550 5.1.1 "));
    send(&addr, "bob+news@mx.test", "tagged");
    let files = maildir_files(dir.path(), "bob", 1);
    assert_eq!(files.len(), 1);
    // The full address as received, as Postfix writes it.
    assert!(
        files[0].contains("Delivered-To: bob+news@mx.test\n"),
        "{}",
        files[0]
    );
    assert!(!dir.path().join("maildir/mx.test/bob+news").exists());
    // `subaddress_folder` is off by default: no folder is made.
    assert!(!dir.path().join("maildir/mx.test/bob/.news").exists());
    terminate(child);
}

#[test]
fn existing_folders_get_their_tag_and_missing_ones_go_to_inbox() {
    let dir = tempfile::tempdir().unwrap();
    make_folder(dir.path(), "bob", ".news");
    let extra = format!("{BOB}subaddress_folder = \"existing\"\n");
    let (child, addr) = serve(&config_file(dir.path(), &extra));
    send(&addr, "bob+news@mx.test", "to the folder");
    send(&addr, "bob+other@mx.test", "to inbox");
    let folder = maildir_files(dir.path(), "bob/.news", 1);
    assert_eq!(folder.len(), 1);
    assert!(
        folder[0].contains("Subject: to the folder"),
        "{}",
        folder[0]
    );
    let inbox = maildir_files(dir.path(), "bob", 1);
    assert_eq!(inbox.len(), 1);
    assert!(inbox[0].contains("Subject: to inbox"), "{}", inbox[0]);
    assert!(!dir.path().join("maildir/mx.test/bob/.other").exists());
    terminate(child);
}

#[test]
fn create_makes_the_folder_but_tags_cannot_leave_the_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{BOB}subaddress_folder = \"create\"\n");
    let (child, addr) = serve(&config_file(dir.path(), &extra));
    send(&addr, "bob+news@mx.test", "made");
    let folder = maildir_files(dir.path(), "bob/.news", 1);
    assert_eq!(folder.len(), 1);
    let news = dir.path().join("maildir/mx.test/bob/.news");
    for sub in ["cur", "new", "tmp"] {
        assert!(news.join(sub).is_dir(), "{sub}");
        assert!(news.parent().unwrap().join(sub).is_dir(), "INBOX {sub}");
    }
    assert!(news.join("maildirfolder").is_file());

    assert!(rcpt_reply(&addr, "\"bob+../x\"@mx.test").starts_with("250 "));
    send(&addr, "\"bob+../x\"@mx.test", "dots");
    send(&addr, "bob+a/b@mx.test", "slash");
    send(&addr, "bob+.hidden@mx.test", "hidden");
    let inbox = maildir_files(dir.path(), "bob", 3);
    assert_eq!(inbox.len(), 3, "{inbox:?}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("maildir/mx.test/bob"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".news", "cur", "new", "tmp"]);
    let mut domains: Vec<String> = std::fs::read_dir(dir.path().join("maildir/mx.test"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    domains.sort();
    assert_eq!(domains, ["bob"]);
    terminate(child);
}

#[test]
fn the_delimiter_is_configurable_and_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{BOB}recipient_delimiter = \"-\"\n");
    let (child, addr) = serve(&config_file(dir.path(), &extra));
    assert!(rcpt_reply(&addr, "bob+news@mx.test").starts_with("550 5.1.1 "));
    send(&addr, "bob-news@mx.test", "dash");
    assert_eq!(maildir_files(dir.path(), "bob", 1).len(), 1);
    terminate(child);

    let off = tempfile::tempdir().unwrap();
    let extra = format!("{BOB}recipient_delimiter = \"\"\n");
    let (child, addr) = serve(&config_file(off.path(), &extra));
    assert!(rcpt_reply(&addr, "bob+news@mx.test").starts_with("550 5.1.1 "));
    assert!(rcpt_reply(&addr, "bob@mx.test").starts_with("250 "));
    terminate(child);
}

#[test]
fn any_user_with_a_tag_is_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = serve(&config_file(dir.path(), "accept_any_user = true\n"));
    send(&addr, "eve+news@mx.test", "any");
    assert_eq!(maildir_files(dir.path(), "eve", 1).len(), 1);
    assert!(!dir.path().join("maildir/mx.test/eve+news").exists());
    terminate(child);
}

#[test]
fn check_config_allows_only_a_few_delimiters() {
    let dir = tempfile::tempdir().unwrap();
    for good in ["+", "-", "+-_", ""] {
        let extra = format!("recipient_delimiter = \"{good}\"\nsubaddress_folder = \"create\"\n");
        assert_config_ok(&config_file(dir.path(), &extra));
    }
    for bad in [".", "+.", "/", "@", "a"] {
        let file = config_file(dir.path(), &format!("recipient_delimiter = \"{bad}\"\n"));
        let (code, _, stderr) = run_with("check-config", &file);
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("cannot be a delimiter"), "{bad}: {stderr}");
    }
    let file = config_file(dir.path(), "subaddress_folder = \"always\"\n");
    let (code, _, stderr) = run_with("check-config", &file);
    assert_eq!(code, Some(2), "{stderr}");
}
