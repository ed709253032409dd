//! Include/exclude patterns with restic's semantics.
//!
//! A pattern is split at `/` into components; each component is a glob
//! (`*`, `?`, `[…]`, `\` escapes, as Go's `filepath.Match`), and a `**`
//! component matches any number of path components. A pattern starting with
//! `/` is anchored at the root; any other pattern may match starting at any
//! component. A pattern that matches a directory also matches everything
//! below it. Paths and patterns are bytes, so non-UTF-8 names work.

/// A compiled list of patterns.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    list: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    anchored: bool,
    parts: Vec<Vec<u8>>,
}

impl Patterns {
    /// Compiles patterns; refuses invalid ones (unclosed `[`).
    pub fn new<S: AsRef<[u8]>>(patterns: &[S]) -> Result<Patterns, String> {
        let mut list = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            if p.is_empty() {
                continue;
            }
            let anchored = p[0] == b'/';
            let parts: Vec<Vec<u8>> = p
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .map(|c| c.to_vec())
                .collect();
            for part in &parts {
                if part != b"**" {
                    glob_match(part, b"").map_err(|e| {
                        format!("invalid pattern {:?}: {e}", String::from_utf8_lossy(p))
                    })?;
                }
            }
            list.push(Pattern { anchored, parts });
        }
        Ok(Patterns { list })
    }

    /// Whether no pattern was given.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any pattern matches `path` (an absolute path, as bytes) or
    /// one of its parent directories.
    pub fn matches(&self, path: &[u8]) -> bool {
        let comps: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        self.list.iter().any(|p| {
            // Unanchored, a pattern may start at any component.
            let starts = if p.anchored { 0..1 } else { 0..comps.len() };
            match_prefix(&p.parts, &comps, starts)
        })
    }

    /// Whether some pattern could match a path below the directory `dir`
    /// (used to decide whether to descend when including).
    pub fn may_match_below(&self, dir: &[u8]) -> bool {
        let comps: Vec<&[u8]> = dir
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        self.list.iter().any(|p| {
            if !p.anchored {
                return true;
            }
            could_extend(&p.parts, &comps)
        })
    }
}

/// Whether `pat` matches the first components (any number ≥ all of the
/// pattern) of `comps[i..]` for some `i` in `starts`.
///
/// Keeps the set of positions in `comps` where the pattern read so far can
/// end, one pass per pattern part: `**` reaches every position from the
/// first one on. A pattern of k `**` then costs parts × components glob
/// matches; trying each split recursively cost about components^k, so a
/// user's `/**/**/…/**/x` would hang a backup on its first deep path (seen
/// while writing the fuzz target `patterns`).
fn match_prefix(pat: &[Vec<u8>], comps: &[&[u8]], starts: std::ops::Range<usize>) -> bool {
    if starts.is_empty() {
        return false;
    }
    let mut at = vec![false; comps.len() + 1];
    at[starts].fill(true);
    for p in pat {
        if p == b"**" {
            if let Some(first) = at.iter().position(|&b| b) {
                at[first..].fill(true);
            }
            continue;
        }
        let mut next = vec![false; comps.len() + 1];
        let mut any = false;
        for (j, c) in comps.iter().enumerate() {
            if at[j] && glob_match(p, c).unwrap_or(false) {
                next[j + 1] = true;
                any = true;
            }
        }
        if !any {
            return false;
        }
        at = next;
    }
    true
}

/// Whether the components `comps` of a directory are consistent with a
/// prefix of the pattern, so a match deeper down is possible.
fn could_extend(pat: &[Vec<u8>], comps: &[&[u8]]) -> bool {
    match (pat.first(), comps.first()) {
        (_, None) => true,
        (None, Some(_)) => true, // the pattern matched a parent: everything below matches
        (Some(p), Some(_)) if p == b"**" => true,
        (Some(p), Some(c)) => {
            glob_match(p, c).unwrap_or(false) && could_extend(&pat[1..], &comps[1..])
        }
    }
}

/// Go's `filepath.Match` for one component.
fn glob_match(pat: &[u8], name: &[u8]) -> Result<bool, &'static str> {
    let (mut p, mut n) = (0usize, 0usize);
    let (mut star_p, mut star_n) = (usize::MAX, 0usize);
    loop {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star_p = p;
                    star_n = n;
                    p += 1;
                    continue;
                }
                b'?' if n < name.len() => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    let (matched, len) = class_match(&pat[p..], name.get(n).copied())?;
                    if matched {
                        p += len;
                        n += 1;
                        continue;
                    }
                }
                b'\\' => {
                    let c = *pat.get(p + 1).ok_or("trailing backslash")?;
                    if name.get(n) == Some(&c) {
                        p += 2;
                        n += 1;
                        continue;
                    }
                }
                c if name.get(n) == Some(&c) => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        } else if n == name.len() {
            return Ok(true);
        }
        if star_p != usize::MAX && star_n < name.len() {
            star_n += 1;
            p = star_p + 1;
            n = star_n;
            continue;
        }
        // Validate the rest of the pattern so bad patterns are reported.
        let mut q = p;
        while q < pat.len() {
            if pat[q] == b'[' {
                let (_, len) = class_match(&pat[q..], None)?;
                q += len;
            } else {
                q += 1;
            }
        }
        return Ok(false);
    }
}

/// Matches a `[...]` class at the start of `pat`; returns (matched, length).
fn class_match(pat: &[u8], c: Option<u8>) -> Result<(bool, usize), &'static str> {
    let mut i = 1;
    let negate = matches!(pat.get(1), Some(b'^') | Some(b'!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = match pat.get(i) {
            None => return Err("unclosed ["),
            Some(b']') if !first => break,
            Some(b'\\') => {
                i += 1;
                *pat.get(i).ok_or("unclosed [")?
            }
            Some(&b) => b,
        };
        first = false;
        i += 1;
        let mut hi = lo;
        if pat.get(i) == Some(&b'-') && pat.get(i + 1).is_some_and(|&b| b != b']') {
            hi = pat[i + 1];
            i += 2;
        }
        if let Some(c) = c {
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    Ok((c.is_some() && matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pats: &[&str], path: &str) -> bool {
        Patterns::new(pats).unwrap().matches(path.as_bytes())
    }

    #[test]
    fn restic_like_matching() {
        assert!(m(&["*.go"], "/a/b/c.go"));
        assert!(!m(&["*.go"], "/a/b/c.rs"));
        assert!(m(&["foo"], "/a/foo/bar"));
        assert!(m(&["/a/foo"], "/a/foo/bar"));
        assert!(!m(&["/foo"], "/a/foo"));
        assert!(m(&["a/*/c"], "/x/a/b/c"));
        assert!(!m(&["a/*/c"], "/x/a/b/d/c"));
        assert!(m(&["/x/**/c"], "/x/a/b/d/c"));
        assert!(m(&["/x/**"], "/x/a"));
        assert!(m(&["fi?e[0-9]"], "/d/file7"));
        assert!(!m(&["fi?e[!0-9]"], "/d/file7"));
        assert!(m(&["cache"], "/home/u/.cache/../cache"));
        assert!(Patterns::new(&["bad["]).is_err());
        assert!(Patterns::new(&["/ok/[a-z]*"]).is_ok());
        assert!(Patterns::new(&[&b"/bad-\xff"[..]])
            .unwrap()
            .matches(b"/bad-\xff/x"));
    }

    /// Patterns come from users: many `**` must not make matching
    /// exponential. Before, the anchored pattern below took about
    /// C(52, 12), some 2·10^11, steps against the path.
    #[test]
    fn many_double_stars_match_in_polynomial_time() {
        let stars = "**/".repeat(12);
        let path = format!("/{}", vec!["a"; 40].join("/"));
        let start = std::time::Instant::now();
        assert!(!m(&[&format!("/{stars}x")], &path));
        assert!(!m(&[&format!("{stars}x")], &path));
        assert!(!m(&[&format!("/a/**/a/**/a/{stars}x")], &path));
        assert!(m(&[&format!("/{stars}x")], &format!("{path}/x")));
        assert!(m(&[&format!("{stars}a/x")], &format!("{path}/x/y")));
        assert!(m(&[&format!("/{stars}")], &path));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    /// The positions-set matcher agrees with the recursive definition on
    /// small cases of every shape.
    #[test]
    fn double_star_semantics() {
        assert!(m(&["/**"], "/"));
        assert!(m(&["**"], "/a"));
        assert!(!m(&["**"], "/"));
        assert!(m(&["/"], "/anything"));
        assert!(m(&["/a/**/b/**/c"], "/a/b/c"));
        assert!(m(&["/a/**/b/**/c"], "/a/x/b/y/z/c"));
        assert!(!m(&["/a/**/b/**/c"], "/a/x/c/y/b"));
        assert!(m(&["b/**/c"], "/a/b/c"));
        assert!(m(&["b/**"], "/a/b"));
        assert!(!m(&["b/**/c"], "/a/c/b"));
    }

    #[test]
    fn descend_decisions() {
        let p = Patterns::new(&["/a/b/c"]).unwrap();
        assert!(p.may_match_below(b"/a"));
        assert!(p.may_match_below(b"/a/b"));
        assert!(!p.may_match_below(b"/x"));
        assert!(p.may_match_below(b"/a/b/c/d"));
    }
}
