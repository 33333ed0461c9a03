//! The RESP2 request parser and reply encoder of the balancer's Redis port.
//!
//! Hand-written rather than taken from `redis-protocol` (6.0.0): that
//! crate's decoder recurses once per nesting level, and 1,000 nested
//! arrays (`*1\r\n` repeated, 4 KB) overflow a 256 KiB reader thread's
//! stack, which aborts the whole balancer process (a stack overflow is not
//! a panic); it checks declared lengths against no limit, and has no inline
//! commands. A server only needs the one shape clients send (an array of
//! bulk strings, or one inline line), which this parses without recursion,
//! checking every declared length against the limits below before waiting
//! for the bytes, with checked arithmetic. Proptest-fuzzed in the tests.

use std::fmt;

/// Arguments in one command (the command name counts), at most.
pub const MAX_ARGS: usize = 4096;
/// Bytes in one argument (bulk string), at most: the value limit, which is
/// above the key limit.
pub const MAX_BULK_BYTES: usize = crate::types::MAX_VALUE_BYTES;
/// Bytes of arguments in one command, at most.
pub const MAX_COMMAND_BYTES: usize = 4 << 20;
/// Bytes in one inline command line, at most (as Redis).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Bytes of one command on the wire, at most, before the connection has
/// sent AUTH (when a client password is set): enough for
/// `HELLO 3 AUTH user password SETNAME name` with a password of up to
/// [`crate::runtime::auth::MAX_SECRET_BYTES`], so a stranger cannot make
/// the balancer hold megabytes of a command it would refuse anyway.
pub const MAX_UNAUTHED_COMMAND_BYTES: usize = 4096;
/// Bytes in an array or bulk header line (`*4096\r\n`), at most.
const MAX_HEADER_BYTES: usize = 32;

/// Why bytes are not a command; the connection is answered
/// `-ERR Protocol error: ...` and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// One command's arguments and the bytes it took, or `None` if more bytes
/// are needed.
pub type Parsed = Result<Option<(Vec<Vec<u8>>, usize)>, ProtoError>;

fn err<T>(s: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(s.into()))
}

/// Parses one command from the front of `buf`: `Ok(None)` if more bytes
/// are needed, else the arguments and how many bytes they took. An empty
/// argument list (a blank inline line, `*0`) is a command to skip.
pub fn parse(buf: &[u8]) -> Parsed {
    parse_within(buf, usize::MAX)
}

/// [`parse`], refusing a command that takes more than `max_wire` bytes on
/// the wire as soon as its headers (or an unfinished inline line) say so.
pub fn parse_within(buf: &[u8], max_wire: usize) -> Parsed {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, max_wire),
        Some(_) => parse_inline(buf, max_wire),
    }
}

/// Reads a header line `<tag><integer>\r\n` at `at`: the integer and the
/// position after the line.
fn header(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, ProtoError> {
    let rest = buf.get(at..).unwrap_or(&[]);
    let window = &rest[..rest.len().min(MAX_HEADER_BYTES)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if rest.len() >= MAX_HEADER_BYTES || window.contains(&b'\n') {
            return err(format!("invalid {what} header"));
        }
        return Ok(None);
    };
    let Some(&lf) = window.get(cr + 1) else { return Ok(None) };
    if lf != b'\n' {
        return err(format!("invalid {what} header"));
    }
    let digits = &window[1..cr];
    let text = std::str::from_utf8(digits).map_err(|_| ProtoError(format!("invalid {what} length")))?;
    let n: i64 = text.parse().map_err(|_| ProtoError(format!("invalid {what} length")))?;
    Ok(Some((n, at + cr + 2)))
}

fn parse_multibulk(buf: &[u8], max_wire: usize) -> Parsed {
    let Some((n, mut at)) = header(buf, 0, "multibulk")? else { return Ok(None) };
    if n <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    let n = usize::try_from(n).map_err(|_| ProtoError("invalid multibulk length".into()))?;
    if n > MAX_ARGS {
        return err(format!("{n} arguments, limit {MAX_ARGS}"));
    }
    let mut args = Vec::with_capacity(n.min(64));
    let mut total: usize = 0;
    for _ in 0..n {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&b) => return err(format!("expected '$', got '{}'", char::from(b).escape_default())),
        }
        let Some((len, start)) = header(buf, at, "bulk")? else { return Ok(None) };
        let len = usize::try_from(len).map_err(|_| ProtoError("invalid bulk length".into()))?;
        if len > MAX_BULK_BYTES {
            return err(format!("bulk of {len} bytes, limit {MAX_BULK_BYTES}"));
        }
        total = total.checked_add(len).ok_or_else(|| ProtoError("command too large".into()))?;
        if total > MAX_COMMAND_BYTES {
            return err(format!("command of more than {MAX_COMMAND_BYTES} bytes"));
        }
        let end = start.checked_add(len).ok_or_else(|| ProtoError("invalid bulk length".into()))?;
        let after = end.checked_add(2).ok_or_else(|| ProtoError("invalid bulk length".into()))?;
        if after > max_wire {
            return err(format!("command of more than {max_wire} bytes"));
        }
        if buf.len() < after {
            return Ok(None);
        }
        if &buf[end..after] != b"\r\n" {
            return err("bulk not followed by CRLF");
        }
        args.push(buf[start..end].to_vec());
        at = after;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8], max_wire: usize) -> Parsed {
    let max = MAX_INLINE_BYTES.min(max_wire);
    let window = &buf[..buf.len().min(max + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > max {
            return err(format!("inline command of more than {max} bytes"));
        }
        return Ok(None);
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> =
        line.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
    if args.len() > MAX_ARGS {
        return err(format!("{} arguments, limit {MAX_ARGS}", args.len()));
    }
    Ok(Some((args, nl + 1)))
}

// ---- replies ----

/// `+s`: `s` must hold no CR or LF (callers pass constants).
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `-msg`, with any CR or LF in `msg` turned into spaces.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend(msg.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

pub fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Encodes a command as clients send it (for `kvnode bench --resp` and tests).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array(out, args.len());
    for a in args {
        bulk(out, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(buf: &[u8]) -> Parsed {
        parse(buf)
    }

    #[test]
    fn parses_arrays_and_inline() {
        let (a, n) = one(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest").unwrap().unwrap();
        assert_eq!(a, vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(n, 20);
        let (a, n) = one(b"PING  hello\r\nX").unwrap().unwrap();
        assert_eq!(a, vec![b"PING".to_vec(), b"hello".to_vec()]);
        assert_eq!(n, 13);
        assert_eq!(one(b"\r\n").unwrap().unwrap(), (vec![], 2));
        assert_eq!(one(b"*0\r\n").unwrap().unwrap(), (vec![], 4));
        assert_eq!(one(b"*-1\r\n").unwrap().unwrap(), (vec![], 5));
    }

    #[test]
    fn waits_for_more_bytes() {
        let full = b"*2\r\n$3\r\nSET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(one(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(one(b"PIN").unwrap().is_none());
    }

    #[test]
    fn refuses_garbage_and_oversize() {
        assert!(one(b"*1\r\n*1\r\n").is_err(), "nested arrays");
        assert!(one(b"*1\r\n:1\r\n").is_err());
        assert!(one(b"*x\r\n").is_err());
        assert!(one(b"*99999\r\n").is_err(), "too many arguments");
        assert!(one(b"*1\r\n$99999999999999999999\r\n").is_err());
        assert!(one(b"*1\r\n$-5\r\n").is_err());
        assert!(one(format!("*1\r\n${}\r\n", MAX_BULK_BYTES + 1).as_bytes()).is_err());
        assert!(one(b"*1\r\n$1\r\nab\r\n").is_err(), "bulk longer than declared");
        assert!(one(b"*1111111111111111111111111111111111111").is_err(), "endless header");
        assert!(one(&vec![b'a'; MAX_INLINE_BYTES + 1]).is_err(), "endless inline line");
        // A header that can never end in CRLF is refused at once.
        assert!(one(b"*1\n").is_err());
    }

    #[test]
    fn nesting_does_not_recurse() {
        // What aborts redis-protocol's decoder: refused at once here.
        let deep = b"*1\r\n".repeat(100_000);
        assert!(one(&deep).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes: never a panic, and a command never claims more
        /// bytes than there are.
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((_, n))) = parse(&buf) {
                prop_assert!(n <= buf.len() && n > 0);
            }
        }

        /// Mostly-valid input with one byte changed or a cut: never a panic.
        #[test]
        fn mutated_commands_never_panic(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>(),
        ) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut buf = Vec::new();
            command(&mut buf, &refs);
            let i = at % buf.len();
            buf[i] = byte;
            let cut = cut % (buf.len() + 1);
            let _ = parse(&buf[..cut]);
            let _ = parse(&buf);
        }

        /// What `command` encodes parses back to the same arguments, and
        /// every proper prefix asks for more bytes.
        #[test]
        fn round_trips(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..8)) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut buf = Vec::new();
            command(&mut buf, &refs);
            let (got, n) = parse(&buf).unwrap().unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(got, args);
            for cut in 0..buf.len() {
                prop_assert_eq!(parse(&buf[..cut]).unwrap(), None);
            }
        }
    }
}
