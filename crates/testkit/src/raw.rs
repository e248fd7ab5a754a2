//! Raw HTTP/1.1 over a TCP socket, for requests a well-behaved client would never send
//! (dot segments, stalled heads, hand-made `Connection` headers).

use anyhow::{Result, anyhow, bail};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    pub fn status_code(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Sends `request` as is (it should say `Connection: close`) and reads the response until the
/// server closes, for at most `timeout`.
pub async fn raw_request(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<RawResponse> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("no complete response from {addr} within {timeout:?}"))??;
    parse_response(&buf)
}

/// `GET target` with `Host`, the given extra header lines and `Connection: close`.
pub async fn raw_get(
    addr: SocketAddr,
    target: &str,
    extra_headers: &[(&str, &str)],
) -> Result<RawResponse> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_request(addr, req.as_bytes(), Duration::from_secs(10)).await
}

/// Parses one HTTP/1.x response (Content-Length, chunked, or read-to-close body).
pub fn parse_response(buf: &[u8]) -> Result<RawResponse> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(buf)
            )
        })?;
    let RawResponse {
        status, headers, ..
    } = parse_head_only(&buf[..end + 4])?;
    let rest = &buf[end + 4..];
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            bail!("body shorter than Content-Length ({} < {len})", rest.len());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunk size"))?;
        let size_s = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_s.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A kept-open connection for sending several requests and reading responses one at a time.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one complete response (Content-Length or chunked body), waiting at most `timeout`.
    pub async fn read_response(&mut self, timeout: Duration) -> Result<RawResponse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((resp, used)) = try_parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no complete response within {timeout:?}"))??;
            if n == 0 {
                bail!(
                    "connection closed before a complete response ({} bytes)",
                    self.buf.len()
                );
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits until the server closes the connection; returns how long that took, or an error if
    /// it is still open after `timeout` or sends data instead.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Duration> {
        let start = tokio::time::Instant::now();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(start + timeout, self.stream.read(&mut chunk)).await {
                Err(_) => bail!("connection still open after {timeout:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
                // A server may say 408 before closing; keep reading until the close.
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Bytes received but not consumed as a response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// Parses one response from the front of `buf` if it is complete; returns it and its length.
fn try_parse(buf: &[u8]) -> Result<Option<(RawResponse, usize)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = parse_head_only(&buf[..end + 4])?;
    let body_start = end + 4;
    let chunked = head
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Complete when the terminating zero-size chunk and final CRLF are present.
        let rest = &buf[body_start..];
        let Some(pos) = rest.windows(5).position(|w| w == b"0\r\n\r\n") else {
            return Ok(None);
        };
        let used = body_start + pos + 5;
        let body = dechunk(&buf[body_start..used])?;
        return Ok(Some((RawResponse { body, ..head }, used)));
    }
    let len = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < body_start + len {
        return Ok(None);
    }
    let body = buf[body_start..body_start + len].to_vec();
    Ok(Some((RawResponse { body, ..head }, body_start + len)))
}

fn parse_head_only(head: &[u8]) -> Result<RawResponse> {
    let text = std::str::from_utf8(head).map_err(|_| anyhow!("response head is not UTF-8"))?;
    let mut lines = text.trim_end().split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?
        .parse()?;
    let mut headers = http::HeaderMap::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header line {l:?}"))?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes())?,
            http::HeaderValue::from_str(v.trim())?,
        );
    }
    Ok(RawResponse {
        status,
        headers,
        body: Vec::new(),
    })
}
