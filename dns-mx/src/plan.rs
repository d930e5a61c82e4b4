//! The routing rules as a pure function: from the MX records of a domain to the hosts
//! to try, in order. No I/O, so every rule is a table test.

use crate::RouteError;

/// One MX record: a preference and an exchange host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Lower is tried first.
    pub preference: u16,
    /// The host name, without a trailing dot; `""` for the null MX's `.`.
    pub host: String,
}

impl Exchange {
    /// An exchange from a preference and a name as found in DNS (a trailing dot is
    /// dropped; the root `.` becomes `""`).
    pub fn new(preference: u16, host: &str) -> Self {
        Self {
            preference,
            host: host.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// Orders the MX records of a domain into the hosts to try (RFC 5321 §5.1):
///
/// - a single MX whose exchange is `.` is a null MX (RFC 7505): the domain accepts no
///   mail ([`RouteError::NullMx`]); a `.` among other MX records is ignored;
/// - an exchange that is an IP address is not a host name and is skipped (an MX must
///   name a host);
/// - lower preference first; hosts of equal preference in random order (`random`
///   drives the shuffle, so callers and tests control it);
/// - if one of `our_names` is an exchange, only hosts with a strictly lower preference
///   are kept, and none left means the mail would loop ([`RouteError::Loop`]);
/// - at most `max_hosts` hosts.
///
/// ```
/// use dns_mx::{plan, Exchange, RouteError};
/// let mx = vec![Exchange::new(20, "b.test."), Exchange::new(10, "a.test.")];
/// let hosts = plan(mx, &[], 5, &mut || 0).unwrap();
/// assert_eq!(hosts.iter().map(|e| e.host.as_str()).collect::<Vec<_>>(), ["a.test", "b.test"]);
/// assert_eq!(plan(vec![Exchange::new(0, ".")], &[], 5, &mut || 0), Err(RouteError::NullMx));
/// ```
pub fn plan(
    mut records: Vec<Exchange>,
    our_names: &[String],
    max_hosts: usize,
    random: &mut dyn FnMut() -> u64,
) -> Result<Vec<Exchange>, RouteError> {
    if let [only] = records.as_slice()
        && only.host.is_empty()
    {
        return Err(RouteError::NullMx);
    }
    records.retain(|r| !r.host.is_empty() && r.host.parse::<std::net::IpAddr>().is_err());
    if records.is_empty() {
        return Err(RouteError::NoUsableMx);
    }
    records.sort_by_key(|r| r.preference);
    // Shuffle each run of equal preference (Fisher-Yates).
    let mut start = 0;
    while start < records.len() {
        let end = start
            + records[start..]
                .iter()
                .take_while(|r| r.preference == records[start].preference)
                .count();
        for i in (start + 1..end).rev() {
            let j = start + (random() % (i - start + 1) as u64) as usize;
            records.swap(i, j);
        }
        start = end;
    }
    if let Some(ours) = records
        .iter()
        .find(|r| our_names.iter().any(|n| n.eq_ignore_ascii_case(&r.host)))
    {
        let limit = ours.preference;
        records.retain(|r| r.preference < limit);
        if records.is_empty() {
            return Err(RouteError::Loop);
        }
    }
    records.truncate(max_hosts.max(1));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(result: Result<Vec<Exchange>, RouteError>) -> Vec<String> {
        result.unwrap().into_iter().map(|e| e.host).collect()
    }

    fn mx(list: &[(u16, &str)]) -> Vec<Exchange> {
        list.iter().map(|(p, h)| Exchange::new(*p, h)).collect()
    }

    #[test]
    fn table() {
        let none: &[String] = &[];
        let us = ["mx.ours.test".to_owned()];
        type Case<'a> = (
            Vec<Exchange>,
            &'a [String],
            usize,
            Result<Vec<&'a str>, RouteError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                mx(&[(10, "a.test."), (20, "b.test.")]),
                none,
                5,
                Ok(vec!["a.test", "b.test"]),
            ),
            (
                mx(&[(20, "b.test"), (10, "a.test")]),
                none,
                5,
                Ok(vec!["a.test", "b.test"]),
            ),
            (mx(&[(0, ".")]), none, 5, Err(RouteError::NullMx)),
            (mx(&[(0, "."), (10, "a.test")]), none, 5, Ok(vec!["a.test"])),
            (
                mx(&[(10, "192.0.2.1")]),
                none,
                5,
                Err(RouteError::NoUsableMx),
            ),
            (
                mx(&[(10, "192.0.2.1"), (20, "b.test")]),
                none,
                5,
                Ok(vec!["b.test"]),
            ),
            (
                mx(&[(10, "a.test"), (20, "mx.ours.test"), (30, "c.test")]),
                &us,
                5,
                Ok(vec!["a.test"]),
            ),
            (
                mx(&[(10, "MX.OURS.TEST"), (20, "c.test")]),
                &us,
                5,
                Err(RouteError::Loop),
            ),
            (
                mx(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]),
                none,
                2,
                Ok(vec!["a", "b"]),
            ),
        ];
        for (records, names, max, expected) in cases {
            let got = plan(records.clone(), names, max, &mut || 0)
                .map(|v| v.into_iter().map(|e| e.host).collect::<Vec<_>>());
            let expected = expected.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
            assert_eq!(got, expected, "{records:?}");
        }
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let records = mx(&[
            (10, "a.test"),
            (10, "b.test"),
            (10, "c.test"),
            (20, "z.test"),
        ]);
        let mut seen = std::collections::HashSet::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let order = hosts(plan(records.clone(), &[], 5, &mut next));
            assert_eq!(
                order.last().map(String::as_str),
                Some("z.test"),
                "preference still rules"
            );
            seen.insert(order);
        }
        assert_eq!(seen.len(), 6, "all orders of the three equal hosts appear");
    }
}
