//! Repository strings, spelled the way restic spells them:
//!
//! | string | backend |
//! |---|---|
//! | `/path`, `local:/path` | a directory |
//! | `rest:http[s]://[user:pass@]host:port/[path]` | restic's REST server |
//! | `s3:https://host[:port]/bucket[/prefix]`, `s3:host/bucket[/prefix]` | S3 (https unless `http://` is given) |
//! | `gs:bucket:/prefix` | Google Cloud Storage |
//! | `azure:container:/prefix` | Azure Blob Storage |
//!
//! Parsing is pure: credentials and endpoints for emulators come from
//! elsewhere (see [`super::OpenOptions`]).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Local {
        /// The repository directory.
        path: PathBuf,
    },
    /// A restic REST server.
    Rest {
        /// The repository URL without credentials, ending in `/`.
        url: String,
        /// HTTP basic-auth user, from the URL.
        user: Option<String>,
        /// HTTP basic-auth password, from the URL.
        password: Option<String>,
    },
    /// An S3 bucket (AWS or compatible, such as MinIO).
    S3 {
        /// `http://host[:port]` or `https://host[:port]`.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// Object name prefix inside the bucket, without leading or trailing `/`.
        prefix: String,
    },
    /// A Google Cloud Storage bucket.
    Gcs {
        /// The bucket.
        bucket: String,
        /// Object name prefix, without leading or trailing `/`.
        prefix: String,
    },
    /// An Azure Blob Storage container.
    Azure {
        /// The container.
        container: String,
        /// Blob name prefix, without leading or trailing `/`.
        prefix: String,
    },
}

/// The backends restic knows and Stash does not (yet).
const UNSUPPORTED: [&str; 4] = ["b2", "sftp", "swift", "rclone"];

impl Location {
    /// Parses a repository string.
    pub fn parse(s: &str) -> Result<Location> {
        let invalid =
            |why: &str| Error::InvalidArgument(format!("repository {:?}: {why}", redact(s)));
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(invalid("empty path"));
            }
            return Ok(Location::Local { path: path.into() });
        }
        if let Some(rest) = s.strip_prefix("rest:") {
            return parse_rest(rest).map_err(|why| invalid(&why));
        }
        if let Some(rest) = s.strip_prefix("s3:") {
            return parse_s3(rest).map_err(|why| invalid(&why));
        }
        if let Some(rest) = s.strip_prefix("gs:") {
            let (bucket, prefix) =
                bucket_and_prefix(rest, "gs:bucket:/prefix").map_err(|why| invalid(&why))?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("azure:") {
            let (container, prefix) =
                bucket_and_prefix(rest, "azure:container:/prefix").map_err(|why| invalid(&why))?;
            return Ok(Location::Azure { container, prefix });
        }
        if let Some((scheme, _)) = s.split_once(':') {
            if UNSUPPORTED.contains(&scheme) {
                return Err(invalid(&format!(
                    "the {scheme} backend is not available in stash; \
                     supported: local, rest, s3, gs, azure"
                )));
            }
        }
        Ok(Location::Local { path: s.into() })
    }

    /// The backend's name, for messages: `local`, `rest`, `s3`, `gs`, `azure`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Location::Local { .. } => "local",
            Location::Rest { .. } => "rest",
            Location::S3 { .. } => "s3",
            Location::Gcs { .. } => "gs",
            Location::Azure { .. } => "azure",
        }
    }
}

/// The string restic would accept, without credentials.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_prefix = |f: &mut fmt::Formatter<'_>, prefix: &str| {
            if prefix.is_empty() {
                Ok(())
            } else {
                write!(f, "/{prefix}")
            }
        };
        match self {
            Location::Local { path } => write!(f, "local:{}", path.display()),
            Location::Rest { url, .. } => write!(f, "rest:{url}"),
            Location::S3 {
                endpoint,
                bucket,
                prefix,
            } => {
                write!(f, "s3:{endpoint}/{bucket}")?;
                with_prefix(f, prefix)
            }
            Location::Gcs { bucket, prefix } => write!(f, "gs:{bucket}:/{prefix}"),
            Location::Azure { container, prefix } => write!(f, "azure:{container}:/{prefix}"),
        }
    }
}

/// `s` with the user information of every `scheme://user:pass@host` in it
/// replaced by `***`: for showing a repository string (or a message that
/// holds one) that may carry credentials.
pub fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, after) = rest.split_at(i + 3);
        out.push_str(head);
        let end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `http[s]://[user:pass@]host:port/[path]`, as after `rest:`.
fn parse_rest(s: &str) -> std::result::Result<Location, String> {
    let (scheme, after) = s
        .split_once("://")
        .ok_or("expected rest:http://host:port/ or rest:https://host:port/")?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("unsupported scheme {scheme:?} (http or https)"));
    }
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    // Credentials end at the last `@` of the authority: a password may hold `@`.
    let (userinfo, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let (user, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((a, b)) => (a, Some(b)),
                None => (u, None),
            };
            (
                Some(percent_decode(user)?),
                pass.map(percent_decode).transpose()?,
            )
        }
    };
    let mut url = format!("{scheme}://{host}{path}");
    if !url.ends_with('/') {
        url.push('/');
    }
    Ok(Location::Rest {
        url,
        user,
        password,
    })
}

/// After `s3:`: `http[s]://host[:port]/bucket[/prefix]` or
/// `host/bucket[/prefix]` (https), as restic's `s3.ParseConfig`.
fn parse_s3(s: &str) -> std::result::Result<Location, String> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = s.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = s.strip_prefix("//") {
        // restic reads `s3://host/bucket` like `s3:host/bucket`.
        ("https", r)
    } else {
        ("https", s)
    };
    let (host, path) = rest
        .split_once('/')
        .ok_or("no bucket: expected s3:https://host/bucket[/prefix]")?;
    if host.is_empty() {
        return Err("no host: expected s3:https://host/bucket[/prefix]".into());
    }
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err("no bucket: expected s3:https://host/bucket[/prefix]".into());
    }
    Ok(Location::S3 {
        endpoint: format!("{scheme}://{host}"),
        bucket: bucket.to_string(),
        prefix: clean_prefix(prefix),
    })
}

/// `bucket:/prefix` (restic's form for gs: and azure:).
fn bucket_and_prefix(s: &str, form: &str) -> std::result::Result<(String, String), String> {
    let (bucket, prefix) = s
        .split_once(':')
        .ok_or_else(|| format!("expected {form}"))?;
    if bucket.is_empty() {
        return Err(format!("no bucket or container name: expected {form}"));
    }
    Ok((bucket.to_string(), clean_prefix(prefix)))
}

/// `path.Clean` without the leading and trailing slashes, `""` for the root.
fn clean_prefix(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in credentials at {:?}", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str, bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local {
                path: "/srv/repo".into()
            }
        );
        assert_eq!(
            Location::parse("local:/srv/repo").unwrap(),
            Location::Local {
                path: "/srv/repo".into()
            }
        );
        // A relative path with a colon later on is still a path.
        assert_eq!(
            Location::parse("backups/a:b").unwrap(),
            Location::Local {
                path: "backups/a:b".into()
            }
        );
        assert!(Location::parse("local:").is_err());
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn s3_forms_as_restic_reads_them() {
        assert_eq!(
            Location::parse("s3:https://minio.example:9000/bucket/some/prefix").unwrap(),
            s3("https://minio.example:9000", "bucket", "some/prefix")
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/bucket").unwrap(),
            s3("http://127.0.0.1:9000", "bucket", "")
        );
        assert_eq!(
            Location::parse("s3:s3.amazonaws.com/bucket/prefix/").unwrap(),
            s3("https://s3.amazonaws.com", "bucket", "prefix")
        );
        assert_eq!(
            Location::parse("s3://s3.amazonaws.com/bucket").unwrap(),
            s3("https://s3.amazonaws.com", "bucket", "")
        );
        assert_eq!(
            Location::parse("s3:http://h/b//a/./c/../d").unwrap(),
            s3("http://h", "b", "a/d")
        );
        for bad in ["s3:", "s3:https://host", "s3:https://host/", "s3:/bucket"] {
            let e = Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn gs_and_azure_forms() {
        assert_eq!(
            Location::parse("gs:my-bucket:/restic/repo").unwrap(),
            Location::Gcs {
                bucket: "my-bucket".into(),
                prefix: "restic/repo".into()
            }
        );
        assert_eq!(
            Location::parse("gs:my-bucket:/").unwrap(),
            Location::Gcs {
                bucket: "my-bucket".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("azure:container:/repo").unwrap(),
            Location::Azure {
                container: "container".into(),
                prefix: "repo".into()
            }
        );
        let e = Location::parse("gs:bucket-without-path")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gs:bucket:/prefix"), "{e}");
        assert!(Location::parse("azure::/x").is_err());
    }

    #[test]
    fn rest_urls_with_and_without_credentials() {
        assert_eq!(
            Location::parse("rest:http://127.0.0.1:8000/").unwrap(),
            Location::Rest {
                url: "http://127.0.0.1:8000/".into(),
                user: None,
                password: None
            }
        );
        assert_eq!(
            Location::parse("rest:https://al%40x:p%3Ass@@host:8000/user/repo").unwrap(),
            Location::Rest {
                url: "https://host:8000/user/repo/".into(),
                user: Some("al@x".into()),
                password: Some("p:ss@".into())
            }
        );
        assert_eq!(
            Location::parse("rest:http://host:8000").unwrap(),
            Location::Rest {
                url: "http://host:8000/".into(),
                user: None,
                password: None
            }
        );
        assert!(Location::parse("rest:ftp://host/").is_err());
        assert!(Location::parse("rest:host:8000").is_err());
    }

    #[test]
    fn display_never_shows_credentials_and_reparses() {
        for s in [
            "rest:http://u:secret@h:1/r/",
            "s3:http://127.0.0.1:9000/b/p",
            "gs:b:/p",
            "azure:c:/p/q",
            "local:/x",
        ] {
            let l = Location::parse(s).unwrap();
            let shown = l.to_string();
            assert!(!shown.contains("secret"), "{shown}");
            let again = Location::parse(&shown).unwrap();
            assert_eq!(again.to_string(), shown);
            assert_eq!(again.scheme(), l.scheme());
        }
    }

    #[test]
    fn credentials_in_bad_urls_are_not_shown() {
        assert_eq!(
            redact("rest:https://al:s3cret@h:1/x and http://u@h2/"),
            "rest:https://***@h:1/x and http://***@h2/"
        );
        assert_eq!(redact("s3:http://h/b"), "s3:http://h/b");
        let e = Location::parse("rest:ftp://al:s3cret@host/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = Location::parse("rest:https://al:s3cret@/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret") && e.contains("***@"), "{e}");
    }

    #[test]
    fn unsupported_backends_are_named() {
        let e = Location::parse("sftp:host:/x").unwrap_err().to_string();
        assert!(e.contains("sftp backend is not available"), "{e}");
    }
}
