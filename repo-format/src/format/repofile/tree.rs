//! Tree blobs: the JSON listing of one directory.
//!
//! Names are raw bytes here. On disk restic writes every name through Go's
//! `strconv.Quote` (without the outer quotes) and unquotes it on reading, so
//! names that are not UTF-8, or hold quotes, backslashes or control
//! characters, survive JSON. Symlink targets that are not UTF-8 also go into
//! `linktarget_raw`.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::id::Id;

/// Go `os.FileMode` bits.
pub mod gomode {
    /// Directory.
    pub const DIR: u32 = 1 << 31;
    /// Symbolic link.
    pub const SYMLINK: u32 = 1 << 27;
    /// Device (block, or char with CHAR_DEVICE).
    pub const DEVICE: u32 = 1 << 26;
    /// Named pipe.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// Unix socket.
    pub const SOCKET: u32 = 1 << 24;
    /// setuid.
    pub const SETUID: u32 = 1 << 23;
    /// setgid.
    pub const SETGID: u32 = 1 << 22;
    /// Character device (with DEVICE).
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Sticky bit.
    pub const STICKY: u32 = 1 << 20;
    /// Irregular file.
    pub const IRREGULAR: u32 = 1 << 19;

    /// Go FileMode from a Unix `st_mode`.
    pub fn from_unix(st_mode: u32) -> u32 {
        let mut m = st_mode & 0o777;
        m |= match st_mode & libc::S_IFMT {
            libc::S_IFDIR => DIR,
            libc::S_IFLNK => SYMLINK,
            libc::S_IFBLK => DEVICE,
            libc::S_IFCHR => DEVICE | CHAR_DEVICE,
            libc::S_IFIFO => NAMED_PIPE,
            libc::S_IFSOCK => SOCKET,
            libc::S_IFREG => 0,
            _ => IRREGULAR,
        };
        if st_mode & libc::S_ISUID != 0 {
            m |= SETUID;
        }
        if st_mode & libc::S_ISGID != 0 {
            m |= SETGID;
        }
        if st_mode & libc::S_ISVTX != 0 {
            m |= STICKY;
        }
        m
    }

    /// The Unix permission bits (incl. setuid, setgid, sticky) of a Go FileMode.
    pub fn to_unix_perm(m: u32) -> u32 {
        let mut p = m & 0o777;
        if m & SETUID != 0 {
            p |= libc::S_ISUID;
        }
        if m & SETGID != 0 {
            p |= libc::S_ISGID;
        }
        if m & STICKY != 0 {
            p |= libc::S_ISVTX;
        }
        p
    }
}

/// Kind of a tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Block device.
    Dev,
    /// Character device.
    Chardev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Anything else restic met (Windows reparse points and such).
    Irregular,
}

impl NodeType {
    /// The name restic uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Dev => "dev",
            NodeType::Chardev => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Irregular => "irregular",
        }
    }
}

/// An extended attribute.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtendedAttribute {
    /// Attribute name, e.g. `user.comment`.
    pub name: String,
    /// Raw value.
    #[serde(with = "crate::format::repofile::b64")]
    pub value: Vec<u8>,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// File name, raw bytes (never empty, `.`, `..`, nor containing `/` in a
    /// valid tree; see [`Node::check_name`]).
    pub name: Vec<u8>,
    /// Kind.
    pub node_type: NodeType,
    /// Go `os.FileMode`.
    pub mode: u32,
    /// Modification time.
    pub mtime: DateTime<FixedOffset>,
    /// Access time.
    pub atime: DateTime<FixedOffset>,
    /// Status change time.
    pub ctime: DateTime<FixedOffset>,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name.
    pub user: String,
    /// Group name.
    pub group: String,
    /// Inode number.
    pub inode: u64,
    /// `st_dev` of the file system holding it.
    pub device_id: u64,
    /// Size of a regular file.
    pub size: u64,
    /// Link count.
    pub links: u64,
    /// Symlink target, raw bytes.
    pub link_target: Vec<u8>,
    /// Extended attributes.
    pub extended_attributes: Vec<ExtendedAttribute>,
    /// Attributes of other platforms, kept as they were.
    pub generic_attributes: Option<serde_json::Value>,
    /// `st_rdev` of a device.
    pub device: u64,
    /// Data blobs of a file (`Some(vec![])` for an empty file).
    pub content: Option<Vec<Id>>,
    /// Tree of a directory.
    pub subtree: Option<Id>,
    /// Error met while reading the file.
    pub error: String,
}

#[derive(Serialize, Deserialize)]
struct NodeJson {
    name: String,
    #[serde(rename = "type")]
    node_type: NodeType,
    #[serde(default, skip_serializing_if = "is_zero32")]
    mode: u32,
    #[serde(
        default = "crate::format::repofile::gotime::zero",
        with = "crate::format::repofile::gotime"
    )]
    mtime: DateTime<FixedOffset>,
    #[serde(
        default = "crate::format::repofile::gotime::zero",
        with = "crate::format::repofile::gotime"
    )]
    atime: DateTime<FixedOffset>,
    #[serde(
        default = "crate::format::repofile::gotime::zero",
        with = "crate::format::repofile::gotime"
    )]
    ctime: DateTime<FixedOffset>,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    group: String,
    #[serde(default, skip_serializing_if = "is_zero64")]
    inode: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    device_id: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    size: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    links: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    linktarget: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::format::repofile::b64::opt"
    )]
    linktarget_raw: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extended_attributes: Vec<ExtendedAttribute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generic_attributes: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "is_zero64")]
    device: u64,
    content: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}
fn is_zero64(v: &u64) -> bool {
    *v == 0
}

impl Serialize for Node {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let (linktarget, linktarget_raw) = match std::str::from_utf8(&self.link_target) {
            Ok(t) => (t.to_owned(), None),
            // Go's encoder turns invalid bytes into U+FFFD; the raw field is what counts.
            Err(_) => (
                String::from_utf8_lossy(&self.link_target).into_owned(),
                Some(self.link_target.clone()),
            ),
        };
        NodeJson {
            name: go_quote(&self.name),
            node_type: self.node_type,
            mode: self.mode,
            mtime: self.mtime,
            atime: self.atime,
            ctime: self.ctime,
            uid: self.uid,
            gid: self.gid,
            user: self.user.clone(),
            group: self.group.clone(),
            inode: self.inode,
            device_id: self.device_id,
            size: self.size,
            links: self.links,
            linktarget,
            linktarget_raw,
            extended_attributes: self.extended_attributes.clone(),
            generic_attributes: self.generic_attributes.clone(),
            device: self.device,
            content: self.content.clone(),
            subtree: self.subtree,
            error: self.error.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let j = NodeJson::deserialize(d)?;
        let name = go_unquote(&j.name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "node name {:?} is not a valid quoted string",
                j.name
            ))
        })?;
        Ok(Node {
            name,
            node_type: j.node_type,
            mode: j.mode,
            mtime: j.mtime,
            atime: j.atime,
            ctime: j.ctime,
            uid: j.uid,
            gid: j.gid,
            user: j.user,
            group: j.group,
            inode: j.inode,
            device_id: j.device_id,
            size: j.size,
            links: j.links,
            link_target: j
                .linktarget_raw
                .unwrap_or_else(|| j.linktarget.into_bytes()),
            extended_attributes: j.extended_attributes,
            generic_attributes: j.generic_attributes,
            device: j.device,
            content: j.content,
            subtree: j.subtree,
            error: j.error,
        })
    }
}

impl Node {
    /// A node with only name and type set (times at Go's zero time).
    pub fn new(name: Vec<u8>, node_type: NodeType) -> Node {
        let zero = crate::format::repofile::gotime::zero();
        Node {
            name,
            node_type,
            mode: 0,
            mtime: zero,
            atime: zero,
            ctime: zero,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            link_target: Vec::new(),
            extended_attributes: Vec::new(),
            generic_attributes: None,
            device: 0,
            content: None,
            subtree: None,
            error: String::new(),
        }
    }

    /// Whether the name is safe to create inside a directory: not empty,
    /// not `.` or `..`, no `/` and no NUL. A restore refuses other names
    /// whatever the repository says.
    pub fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
        match name {
            b"" => Err("empty name"),
            b"." | b".." => Err("name is . or .."),
            n if n.contains(&b'/') => Err("name contains /"),
            n if n.contains(&0) => Err("name contains a NUL byte"),
            _ => Ok(()),
        }
    }

    /// The name for display (lossy).
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

/// A directory listing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries, sorted by the bytes of their names.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub nodes: Vec<Node>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Node>, D::Error> {
    Ok(Option::<Vec<Node>>::deserialize(d)?.unwrap_or_default())
}

impl Tree {
    /// Sorts nodes by name bytes and refuses duplicates.
    pub fn sort_and_check(&mut self) -> Result<()> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for w in self.nodes.windows(2) {
            if w[0].name == w[1].name {
                return Err(Error::format(
                    "tree",
                    format!("duplicate name {:?}", w[0].name_lossy()),
                ));
            }
        }
        Ok(())
    }

    /// The blob plaintext: JSON plus a trailing newline, as restic writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("tree json");
        v.push(b'\n');
        v
    }

    /// Parses a tree blob; `id` names it in errors.
    pub fn from_json(data: &[u8], id: &Id) -> Result<Tree> {
        serde_json::from_slice(data).map_err(|source| Error::Json {
            what: format!("tree {id}"),
            source,
        })
    }
}

/// Go's `strconv.Quote` without the surrounding quotes.
pub fn go_quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    let mut rest = name;
    while !rest.is_empty() {
        let (ch, width) = match std::str::from_utf8(rest) {
            Ok(s) => {
                let c = s.chars().next().expect("non-empty");
                (Some(c), c.len_utf8())
            }
            Err(e) if e.valid_up_to() > 0 => {
                let s = std::str::from_utf8(&rest[..e.valid_up_to()]).expect("valid prefix");
                let c = s.chars().next().expect("non-empty");
                (Some(c), c.len_utf8())
            }
            Err(_) => (None, 1),
        };
        match ch {
            None => out.push_str(&format!("\\x{:02x}", rest[0])),
            Some('"') => out.push_str("\\\""),
            Some('\\') => out.push_str("\\\\"),
            Some(c) if is_go_print(c) => out.push(c),
            Some('\x07') => out.push_str("\\a"),
            Some('\x08') => out.push_str("\\b"),
            Some('\x0c') => out.push_str("\\f"),
            Some('\n') => out.push_str("\\n"),
            Some('\r') => out.push_str("\\r"),
            Some('\t') => out.push_str("\\t"),
            Some('\x0b') => out.push_str("\\v"),
            Some(c) if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            Some(c) if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            Some(c) => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
        rest = &rest[width..];
    }
    out
}

/// Approximates Go's `strconv.IsPrint` (letters, marks, numbers,
/// punctuation, symbols and the ASCII space). It is exact for ASCII and
/// Latin-1 and for the control, format, separator, surrogate and
/// private-use ranges; unassigned code points are treated as printable,
/// which only means we keep such rare characters unescaped (restic reads
/// them either way).
fn is_go_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    if u < 0x100 {
        return u >= 0xa1 && u != 0xad;
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    !matches!(u,
        0x061c | 0x06dd | 0x070f | 0x0890 | 0x0891 | 0x08e2 | 0x180e
        | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f
        | 0xfeff | 0xfff9..=0xfffb | 0xfffe | 0xffff
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff)
}

/// Go's `strconv.Unquote` of `"` + s + `"`, returning raw bytes.
pub fn go_unquote(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex =
        |h: &[u8]| -> Option<u32> { u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok() };
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let c = *b.get(i + 1)?;
                i += 2;
                match c {
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b'f' => out.push(0xc),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0xb),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    b'\'' => out.push(b'\''),
                    b'x' => {
                        out.push(hex(b.get(i..i + 2)?)? as u8);
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        let o = std::str::from_utf8(b.get(i - 1..i + 2)?).ok()?;
                        let v = u32::from_str_radix(o, 8).ok()?;
                        if v > 255 {
                            return None;
                        }
                        out.push(v as u8);
                        i += 2;
                    }
                    b'u' | b'U' => {
                        let n = if c == b'u' { 4 } else { 8 };
                        let v = char::from_u32(hex(b.get(i..i + n)?)?)?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(v.encode_utf8(&mut buf).as_bytes());
                        i += n;
                    }
                    _ => return None,
                }
            }
            b'\n' => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        // Expected values as Go's strconv.Quote prints them (outer quotes removed).
        let cases: &[(&[u8], &str)] = &[
            (b"plain name.txt", "plain name.txt"),
            (b"quo\"te", "quo\\\"te"),
            (b"back\\slash", "back\\\\slash"),
            (b"new\nline\ttab", "new\\nline\\ttab"),
            (b"bad-\xff\xfe-name", "bad-\\xff\\xfe-name"),
            ("ümlaut 😀".as_bytes(), "ümlaut 😀"),
            (b"\x01\x7f", "\\x01\\x7f"),
            ("nb\u{a0}sp".as_bytes(), "nb\\u00a0sp"),
            ("zw\u{200b}".as_bytes(), "zw\\u200b"),
            (b"\xe2\x82", "\\xe2\\x82"),
        ];
        for (raw, quoted) in cases {
            assert_eq!(go_quote(raw), *quoted, "{raw:?}");
            assert_eq!(go_unquote(quoted).unwrap(), *raw, "{quoted}");
        }
        assert_eq!(go_unquote("\\101\\x41\\u0041").unwrap(), b"AAA");
        assert!(go_unquote("bad\\q").is_none());
        assert!(go_unquote("trailing\\").is_none());
    }

    proptest::proptest! {
        #[test]
        fn quote_round_trips_any_bytes(name in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            proptest::prop_assert_eq!(go_unquote(&go_quote(&name)).unwrap(), name);
        }
    }

    #[test]
    fn node_json_is_restic_shaped() {
        let mut n = Node::new(b"a\"b\xff".to_vec(), NodeType::File);
        n.mode = 0o644;
        n.content = Some(vec![]);
        n.link_target = b"".to_vec();
        let j = serde_json::to_string(&n).unwrap();
        assert!(j.contains(r#""name":"a\\\"b\\xff""#), "{j}");
        assert!(j.contains(r#""content":[]"#), "{j}");
        assert!(j.contains(r#""mtime":"0001-01-01T00:00:00Z""#), "{j}");
        assert!(j.contains(r#""uid":0,"gid":0"#), "{j}");
        let back: Node = serde_json::from_str(&j).unwrap();
        assert_eq!(back, n);

        let mut d = Node::new(b"dir".to_vec(), NodeType::Dir);
        d.mode = gomode::DIR | 0o755;
        d.subtree = Some(Id::hash(b"x"));
        let j = serde_json::to_string(&d).unwrap();
        assert!(j.contains(r#""content":null"#), "{j}");
        assert!(j.contains(&format!(r#""mode":{}"#, gomode::DIR | 0o755)));

        let mut l = Node::new(b"l".to_vec(), NodeType::Symlink);
        l.link_target = b"tar\xffget".to_vec();
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.contains("linktarget_raw"));
        assert_eq!(
            serde_json::from_str::<Node>(&j).unwrap().link_target,
            l.link_target
        );
    }

    #[test]
    fn modes_convert_both_ways() {
        assert_eq!(
            gomode::from_unix(libc::S_IFDIR | 0o1777),
            gomode::DIR | gomode::STICKY | 0o777
        );
        assert_eq!(
            gomode::from_unix(libc::S_IFREG | 0o4755),
            gomode::SETUID | 0o755
        );
        assert_eq!(
            gomode::from_unix(libc::S_IFCHR | 0o600),
            gomode::DEVICE | gomode::CHAR_DEVICE | 0o600
        );
        assert_eq!(
            gomode::to_unix_perm(gomode::SETGID | gomode::DIR | 0o750),
            0o2750
        );
    }

    #[test]
    fn tree_sorts_by_bytes_and_refuses_duplicates() {
        let mut t = Tree {
            nodes: vec![
                Node::new(b"b".to_vec(), NodeType::File),
                Node::new(b"B".to_vec(), NodeType::File),
                Node::new(b"\xffz".to_vec(), NodeType::File),
                Node::new(b"a".to_vec(), NodeType::File),
            ],
        };
        t.sort_and_check().unwrap();
        let names: Vec<_> = t.nodes.iter().map(|n| n.name.clone()).collect();
        assert_eq!(
            names,
            vec![
                b"B".to_vec(),
                b"a".to_vec(),
                b"b".to_vec(),
                b"\xffz".to_vec()
            ]
        );
        let j = t.to_json();
        assert_eq!(*j.last().unwrap(), b'\n');
        assert_eq!(Tree::from_json(&j, &Id::default()).unwrap(), t);
        t.nodes.push(Node::new(b"a".to_vec(), NodeType::Dir));
        assert!(t.sort_and_check().is_err());
    }

    #[test]
    fn unsafe_names_are_refused() {
        for n in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0"] {
            assert!(Node::check_name(n).is_err(), "{n:?}");
        }
        assert!(Node::check_name(b"...").is_ok());
        assert!(Node::check_name(b".hidden").is_ok());
    }
}
