//! A small blocking RESP2 client: `kvnode bench --resp` speaks it to a
//! kvstore balancer's RESP port or to a real Redis alike.

use super::codec;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A reply, as much of it as a benchmark needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// Replies nest this deep at most (a benchmark never sees nesting).
const MAX_DEPTH: usize = 8;
/// Bulk replies of this many bytes at most.
const MAX_REPLY_BULK: usize = 512 << 20;

pub struct RespClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl RespClient {
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<RespClient> {
        let s = super::super::net::connect(addr, timeout)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        RespClient::from_stream(s)
    }

    /// A client on a connection already open.
    pub fn from_stream(s: TcpStream) -> io::Result<RespClient> {
        let r = BufReader::with_capacity(64 * 1024, s.try_clone()?);
        Ok(RespClient { w: s, r, buf: Vec::new() })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        self.send(args)?;
        self.flush()?;
        self.read()
    }

    /// Queues one command (sent by `flush`).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        codec::command(&mut self.buf, args);
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<Value> {
        self.value(0)
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut l = Vec::new();
        self.r.read_until(b'\n', &mut l)?;
        if l.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        if !l.ends_with(b"\r\n") {
            return Err(bad("reply line not ended by CRLF"));
        }
        l.truncate(l.len() - 2);
        Ok(l)
    }

    fn value(&mut self, depth: usize) -> io::Result<Value> {
        if depth > MAX_DEPTH {
            return Err(bad("reply nested too deep"));
        }
        let l = self.line()?;
        let (tag, rest) = l.split_first().ok_or_else(|| bad("empty reply line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let num = || text.parse::<i64>().map_err(|_| bad(format!("bad length {text:?}")));
        Ok(match tag {
            b'+' => Value::Simple(text),
            b'-' => Value::Error(text),
            b':' => Value::Int(num()?),
            b'$' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Value::Bulk(None));
                }
                let n = usize::try_from(n).map_err(|_| bad("bad bulk length"))?;
                if n > MAX_REPLY_BULK {
                    return Err(bad("bulk reply too large"));
                }
                let mut b = vec![0; n.checked_add(2).ok_or_else(|| bad("bad bulk length"))?];
                io::Read::read_exact(&mut self.r, &mut b)?;
                b.truncate(n);
                Value::Bulk(Some(b))
            }
            b'*' => {
                let n = num()?;
                if n < 0 {
                    return Ok(Value::Array(None));
                }
                let n = usize::try_from(n).map_err(|_| bad("bad array length"))?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(self.value(depth + 1)?);
                }
                Value::Array(Some(v))
            }
            _ => return Err(bad(format!("unknown reply type {:?}", char::from(*tag)))),
        })
    }
}
