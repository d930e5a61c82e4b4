//! What is wrong with a file, and where: each problem with its line, found from the
//! spans toml keeps for every key and value (inline tables and dotted keys included),
//! and an unknown key with the nearest known one.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where a problem is in the file.
#[derive(Clone, Copy, Debug)]
pub(super) enum At<'a> {
    /// A top-level key (`""`: the file as a whole).
    Top(&'a str),
    /// A key of the table `[name]` (`""`: the table itself).
    Key(&'a str, &'a str),
    /// A key of the n-th `[[name]]` (`""`: the entry itself).
    Entry(&'a str, usize, &'a str),
    /// A key of the table `[name.sub]` (`""`: that table itself).
    Sub(&'a str, &'a str, &'a str),
    /// A key of the n-th `[[name.sub]]` (`""`: the entry itself).
    SubEntry(&'a str, &'a str, usize, &'a str),
}

/// The parsed file, with the span of every key and value.
pub(super) struct Document<'t> {
    text: &'t str,
    root: DeTable<'t>,
}

impl<'t> Document<'t> {
    pub(super) fn parse(text: &'t str) -> Result<Self, toml::de::Error> {
        Ok(Self {
            text,
            root: DeTable::parse(text)?.into_inner(),
        })
    }

    /// The top-level entries, in the order of the file.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&str, &Spanned<DeValue<'t>>)> {
        let mut entries: Vec<_> = self.root.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries.into_iter().map(|(k, v)| (k.get_ref().as_ref(), v))
    }

    /// The line (from 1) of `at`: its key, else its table, else `None`.
    pub(super) fn line(&self, at: At<'_>) -> Option<usize> {
        let (name, index, key) = match at {
            At::Top("") => return None,
            At::Top(key) => {
                return self
                    .key_span(&self.root, key)
                    .map(|s| self.line_of(s.start));
            }
            At::Key(table, key) => (table, None, key),
            At::Entry(array, i, key) => (array, Some(i), key),
            At::Sub(table, sub, key) => {
                let outer = get(&self.root, table)?.get_ref().as_table()?;
                let inner = get(outer, sub);
                let span = inner
                    .and_then(|v| v.get_ref().as_table())
                    .and_then(|t| self.key_span(t, key))
                    .or_else(|| self.key_span(outer, sub))
                    .or_else(|| self.key_span(&self.root, table))?;
                return Some(self.line_of(span.start));
            }
            At::SubEntry(table, array, i, key) => {
                let outer = get(&self.root, table)?.get_ref().as_table()?;
                let entry = get(outer, array)?.get_ref().as_array()?.get(i)?;
                let span = entry
                    .get_ref()
                    .as_table()
                    .and_then(|t| self.key_span(t, key))
                    .unwrap_or_else(|| entry.span());
                return Some(self.line_of(span.start));
            }
        };
        let header = self.key_span(&self.root, name);
        let mut value = get(&self.root, name)?;
        if let Some(i) = index {
            value = value.get_ref().as_array()?.get(i)?;
        }
        let table = value.get_ref().as_table();
        let span = table
            .and_then(|t| self.key_span(t, key))
            .or_else(|| index.map(|_| value.span()))
            .or(header)?;
        Some(self.line_of(span.start))
    }

    /// The line (from 1) of a byte offset.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn key_span(&self, table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| k.span())
    }
}

/// The value of `key` in `table`.
pub(super) fn get<'a, 't>(table: &'a DeTable<'t>, key: &str) -> Option<&'a Spanned<DeValue<'t>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// The key of `table` (or of a table in the array) whose value holds byte `offset`.
pub(super) fn key_at(value: &DeValue<'_>, offset: usize) -> Option<String> {
    let table = match value {
        DeValue::Table(t) => t,
        DeValue::Array(items) => {
            return items
                .iter()
                .find(|i| i.span().contains(&offset))
                .and_then(|i| key_at(i.get_ref(), offset));
        }
        _ => return None,
    };
    table
        .iter()
        .find(|(k, v)| v.span().contains(&offset) || k.span().contains(&offset))
        .map(|(k, _)| k.get_ref().to_string())
}

/// The problems of one configuration, each with its line when it has one.
#[derive(Debug, Default)]
pub struct Problems {
    lines: Vec<(Option<usize>, String)>,
}

impl Problems {
    pub(super) fn add(&mut self, doc: &Document<'_>, at: At<'_>, message: impl Into<String>) {
        self.lines.push((doc.line(at), message.into()));
    }

    pub(super) fn add_at_line(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.lines.push((line, message.into()));
    }

    pub(super) fn into_result(self) -> Result<(), Self> {
        if self.lines.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Each problem as `line N: message` (or the message alone).
    pub fn each(&self) -> impl Iterator<Item = String> + '_ {
        self.lines.iter().map(|(line, message)| match line {
            Some(n) => format!("line {n}: {message}"),
            None => message.clone(),
        })
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.each().collect();
        f.write_str(&all.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// A toml or serde message on one line, with "did you mean" for an unknown key.
pub(super) fn explain(message: &str) -> String {
    let message = message.trim_end().replace('\n', " ");
    match nearest_known_field(&message) {
        Some(near) => format!("{message} (did you mean `{near}`?)"),
        None => message,
    }
}

/// In serde's `unknown field `x`, expected one of `a`, `b``, the expected name nearest
/// to `x`, when one is near enough to be a typo.
fn nearest_known_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let names = expected.split('`').skip(1).step_by(2);
    nearest(unknown, names)
}

/// The name in `known` nearest to `unknown`, if it is near enough to be a typo.
pub(super) fn nearest<'a>(
    unknown: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_get_the_nearest_known_one() {
        let m = "unknown field `max_recipent`, expected one of `max_message_size`, `max_recipients`, `max_errors`";
        assert!(
            explain(m).ends_with("(did you mean `max_recipients`?)"),
            "{}",
            explain(m)
        );
        let m = "unknown field `zzz`, expected `spf` or `dkim`";
        assert_eq!(explain(m), m);
    }
}
