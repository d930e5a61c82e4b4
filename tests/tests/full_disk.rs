//! A full disk: the queue refuses with `452 4.3.1`, keeps nothing half-written, and
//! takes mail again once there is room. The queue lives on a small tmpfs the test
//! mounts (root only; the test says so and skips elsewhere).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mta_tests::{Options, RawClient, TestMta, code_of};
use smtp_server::ListenerMode::Relay;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs here (the test needs root)");
        }
        ok.then(|| Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn segments(queue: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<_> = std::fs::read_dir(queue.join("spool"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| {
            let len = e.metadata().unwrap().len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    found.sort();
    found
}

async fn send(c: &mut RawClient, body: &[u8]) -> String {
    assert_eq!(c.code("MAIL FROM:<a@far.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<bob@example.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    c.send(body).await;
    c.send(b"\r\n.\r\n").await;
    code_of(&c.reply().await)
}

/// Each refusal on a full disk used to leave an empty spool segment behind (300
/// refusals, 300 empty `.seg` files until a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_452_and_leaves_no_empty_segments() {
    let base = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(base.path(), "8m") else {
        return;
    };
    let queue = fs.0.join("queue");
    let mut t = TestMta::start_opts(Options {
        queue_path: Some(&queue),
        ..Options::default()
    })
    .await;
    let mut c = t.connect(Relay).await;
    assert_eq!(c.cmd("EHLO client.test").await.code().as_u16(), 250);
    assert_eq!(
        send(&mut c, b"Subject: room\r\n\r\nfits\r\n").await,
        "250 2.0.0"
    );
    t.wait_for_mail("bob", 1).await;

    // Fill the disk to the last few kilobytes.
    let filler = fs.0.join("filler");
    let mut size = 16 << 20;
    while size >= 4096 {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&filler)
            .unwrap();
        while std::io::Write::write_all(&mut f, &vec![0u8; size]).is_ok() {}
        size /= 2;
    }
    let body = [b"Subject: big\r\n\r\n".as_slice(), &vec![b'x'; 300_000]].concat();
    // The active segment's blocks were allocated ahead (up to 4 MiB): messages go on
    // being taken, durably, until that room is used up; then the disk is full for the
    // queue too.
    let mut taken = 0;
    while send(&mut c, &body).await == "250 2.0.0" {
        taken += 1;
        assert!(taken <= 14, "more than the 4 MiB allocated ahead was taken");
    }
    let before = segments(&queue);
    for _ in 0..5 {
        assert_eq!(send(&mut c, &body).await, "452 4.3.1");
    }
    let after = segments(&queue);
    assert!(
        after.len() <= before.len(),
        "refused commits left segments: before {before:?}, after {after:?}"
    );
    assert!(after.iter().all(|(_, len)| *len > 0), "{after:?}");

    // Room again: mail is taken again.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(send(&mut c, &body).await, "250 2.0.0");
    t.wait_for_mail("bob", 2 + taken).await;
    t.stop().await;
}
