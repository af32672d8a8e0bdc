//! The one glob matcher: `*` any run of characters, `?` one character, `[…]` one of a set or
//! range (`[!…]` or `[^…]` negated); a name without these matches itself only. Telegraf's
//! `devices` and `interfaces` options (`vd*`, `eth[0-1]`), the agent's name filters
//! (`kube-*`), declared sources' paths, and each component of the tail engine's path globs
//! (`/var/log/containers/*.log`) take it. It matches bytes, so that file names that are not
//! UTF-8 are matched too; `?` takes one UTF-8 character.

/// A validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Vec<u8>,
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: empty pattern or unclosed `[`")]
pub(crate) struct GlobError(pub(crate) String);

impl Glob {
    pub(crate) fn new(pattern: &str) -> Result<Glob, GlobError> {
        let chars = pattern.as_bytes().to_vec();
        if chars.is_empty() {
            return Err(GlobError(pattern.to_owned()));
        }
        // Every `[` must close, so matching never meets half a set.
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == b'[' {
                match set_end(&chars, i) {
                    Some(end) => i = end,
                    None => return Err(GlobError(pattern.to_owned())),
                }
            }
            i += 1;
        }
        Ok(Glob { pattern: chars })
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        matches(&self.pattern, name.as_bytes())
    }
}

/// Whether any of `globs` matches `name`.
pub(crate) fn any_matches(globs: &[Glob], name: &str) -> bool {
    globs.iter().any(|g| g.matches(name))
}

/// Index of the `]` closing the set that opens at `start`. A `]` right after the opening
/// (and its negation) is a member, as in shell globs.
fn set_end(p: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    if matches!(p.get(i), Some(b'!' | b'^')) {
        i += 1;
    }
    if p.get(i) == Some(&b']') {
        i += 1;
    }
    while i < p.len() {
        if p[i] == b']' {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn set_contains(set: &[u8], c: u8) -> bool {
    let (negated, members) = match set.first() {
        Some(b'!' | b'^') => (true, &set[1..]),
        _ => (false, set),
    };
    let mut found = false;
    let mut i = 0;
    while i < members.len() {
        if i + 2 < members.len() && members[i + 1] == b'-' {
            if members[i] <= c && c <= members[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if members[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    found != negated
}

/// Bytes of the UTF-8 character that starts with `b` (1 for a byte that starts none).
fn char_len(b: u8) -> usize {
    match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Whether `pattern` (validated, or any bytes: an unclosed `[` matches nothing) matches the
/// whole of `s`. Iterative, with one backtrack point for the last `*` (linear for the
/// patterns people write; no recursion, so no stack to exhaust).
pub(crate) fn matches(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some((pi + 1, char_len(s[si]).min(s.len() - si))),
            Some(b'[') => match set_end(p, pi) {
                Some(end) if set_contains(&p[pi + 1..end], s[si]) => Some((end + 1, 1)),
                _ => None,
            },
            Some(&c) if c == s[si] => Some((pi + 1, 1)),
            _ => None,
        };
        match (step, star) {
            (Some((next, taken)), _) => {
                pi = next;
                si += taken;
            }
            (None, Some((star_pi, star_si))) => {
                pi = star_pi + 1;
                si = star_si + 1;
                star = Some((star_pi, star_si + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    #[test]
    fn telegraf_sample_patterns() {
        // The examples of Telegraf's diskio and net sample configs.
        assert!(m("vd*", "vda") && m("vd*", "vd") && !m("vd*", "xvda"));
        assert!(m("sda", "sda") && !m("sda", "sda1"));
        assert!(m("enp0s[0-1]", "enp0s0") && m("enp0s[0-1]", "enp0s1") && !m("enp0s[0-1]", "enp0s2"));
        assert!(m("eth*", "eth0") && !m("eth*", "veth0"));
        assert!(m("*", "") && m("*", "anything"));
        assert!(m("?d?", "vda") && !m("?d?", "vdab"));
        assert!(m("[!l]*", "eth0") && !m("[!l]*", "lo") && m("[^l]*", "eth0"));
        assert!(m("a*b*c", "aXXbYYc") && m("a*b*c", "abbbc") && !m("a*b*c", "aXXbYY"));
        assert!(m("[]]x", "]x"));
        // `?` is one character, whatever its length in UTF-8.
        assert!(m("caf?", "café") && m("?", "é") && !m("??", "é"));
        assert!(matches(b"*.log", b"\xff.log"), "names that are not UTF-8");
    }

    #[test]
    fn bad_patterns() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("eth[0-").is_err());
        assert!(Glob::new("[").is_err());
    }
}
