//! A one-shot HTTP server on 127.0.0.1: answers one request with a canned response and hands
//! back the request it got.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

pub struct Request {
    pub head: String,
    pub body: String,
}

impl Request {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

pub struct OneShot {
    /// `http://127.0.0.1:PORT/v1`
    pub base_url: String,
    handle: JoinHandle<Request>,
}

impl OneShot {
    pub fn request(self) -> Request {
        self.handle.join().unwrap()
    }
}

/// Serves one request with `status` (e.g. "200 OK"), extra header lines and `body`.
pub fn serve_once(status: &str, headers: &str, body: &str) -> OneShot {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        reader.get_mut().write_all(response.as_bytes()).unwrap();
        Request {
            head,
            body: String::from_utf8(body).unwrap(),
        }
    });
    OneShot { base_url, handle }
}

/// A server that accepts a connection and never answers (kept open for `hold`).
pub fn serve_silence(hold: std::time::Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(hold);
        drop(stream);
    });
    base_url
}
