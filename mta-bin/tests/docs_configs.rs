//! Every TOML example in `docs/` and the README is a configuration `mta` accepts
//! (blocks marked `toml fragment` are excerpts: accepted once added to a minimal
//! configuration), and the embedded default is the one `docs/configuration.md` shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mta_bin::config::{Config, EMBEDDED_DEFAULT};

/// The fenced ```toml blocks of a Markdown file, with their line numbers (fragments
/// too, when `fragments`).
fn toml_blocks(text: &str, fragments: bool) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None => {
                let info = line.trim_start().strip_prefix("```").map(str::trim);
                if info.is_some_and(|i| {
                    i.split_whitespace().next() == Some("toml")
                        && i.contains("fragment") == fragments
                }) {
                    current = Some((n + 1, String::new()));
                }
            }
            Some((start, body)) => {
                if line.trim_start().starts_with("```") {
                    blocks.push((*start, std::mem::take(body)));
                    current = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    blocks
}

/// A minimal configuration with `fragment`'s keys added (replacing the same keys).
fn with_fragment(fragment: &str) -> Result<String, toml::de::Error> {
    let mut base: toml::Table = toml::from_str(
        "hostname = \"mx.example.org\"\n[[listener]]\naddress = \"127.0.0.1:2525\"\nmode = \"relay\"\n",
    )?;
    let fragment: toml::Table = toml::from_str(fragment)?;
    base.extend(fragment);
    Ok(toml::to_string(&base).unwrap_or_default())
}

#[test]
fn every_config_in_the_docs_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("README.md"));
    let mut parsed = 0;
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, block) in toml_blocks(&text, false) {
            Config::parse(&block).unwrap_or_else(|e| panic!("{}:{line}: {e:#}", file.display()));
            parsed += 1;
        }
        for (line, block) in toml_blocks(&text, true) {
            let whole = with_fragment(&block)
                .unwrap_or_else(|e| panic!("{}:{line}: not TOML: {e}", file.display()));
            Config::parse(&whole).unwrap_or_else(|e| panic!("{}:{line}: {e:#}", file.display()));
            parsed += 1;
        }
    }
    assert!(
        parsed >= 2,
        "found only {parsed} configurations in the docs"
    );
}

#[test]
fn the_documented_default_is_the_embedded_one() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .unwrap();
    let normalize = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        toml_blocks(&doc, false)
            .iter()
            .any(|(_, block)| normalize(block) == normalize(EMBEDDED_DEFAULT)),
        "docs/configuration.md must show the embedded default exactly"
    );
}
