//! A blocking client for the control socket, used by the CLI.
//!
//! Blocking on purpose: `palisade ban` and `palisade report` are run from
//! fail2ban actions and scripts, and must start and finish in milliseconds
//! without spinning up an async runtime.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::proto::{ControlError, Request, Response};

/// Why talking to the agent failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file exists: the agent is not running, or listens elsewhere.
    #[error(
        "the palisade agent is not running (no control socket at {path}); start it with `palisade agent --local-only` or `systemctl start palisade`, or point --socket / PALISADE_SOCKET at the right agent"
    )]
    NotRunning {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// The socket file exists but nothing listens on it.
    #[error(
        "no palisade agent is listening on {path} (the socket file is left over from an agent that stopped); start the agent again"
    )]
    Stale {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// The caller may not open the socket (it is root-only).
    #[error(
        "permission denied on {path}: the control socket is root-only; run this command as root (e.g. with sudo)"
    )]
    PermissionDenied {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// Reading or writing the connection failed (the agent may have stopped
    /// mid-answer).
    #[error("talking to the agent on {path} failed: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The answer could not be read as this version's protocol.
    #[error(
        "the agent on {path} sent something this palisade does not understand ({detail}); are the CLI and agent the same version?"
    )]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What could not be parsed.
        detail: String,
    },
    /// The agent understood the request and refused it; the error says why.
    #[error("{0}")]
    Agent(ControlError),
}

/// A connection to one agent.
pub struct Client {
    reader: BufReader<UnixStream>,
    path: PathBuf,
}

impl Client {
    /// Connects to the control socket at `path`; the error tells the
    /// operator whether the agent is down, gone, or out of reach.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let path_buf = path.to_path_buf();
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ClientError::NotRunning {
                path: path_buf.clone(),
            },
            io::ErrorKind::ConnectionRefused => ClientError::Stale {
                path: path_buf.clone(),
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                path: path_buf.clone(),
            },
            _ => ClientError::Io {
                path: path_buf.clone(),
                source: e,
            },
        })?;
        Ok(Client {
            reader: BufReader::new(stream),
            path: path_buf,
        })
    }

    /// Sends `request` and returns its single final response. An agent-side
    /// error comes back as [`ClientError::Agent`].
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.stream(request, |_| {})
    }

    /// Sends `request`, hands every streamed item to `on_item`, and returns
    /// the final response.
    pub fn stream(
        &mut self,
        request: &Request,
        mut on_item: impl FnMut(Response),
    ) -> Result<Response, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.io(e))?;
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = self.reader.read_line(&mut buf).map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.protocol("the connection closed before the answer".into()));
            }
            let response: Response =
                serde_json::from_str(&buf).map_err(|e| self.protocol(e.to_string()))?;
            match response {
                Response::Error(e) => return Err(ClientError::Agent(e)),
                r if r.is_final() => return Ok(r),
                item => on_item(item),
            }
        }
    }

    /// Sends any request and reads exactly one answer line of type `R` (the
    /// hub's control socket speaks this way).
    pub fn request<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        request: &Q,
    ) -> Result<R, ClientError> {
        let mut line = serde_json::to_vec(request).map_err(|e| self.protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.io(e))?;
        let mut buf = String::new();
        if self.reader.read_line(&mut buf).map_err(|e| self.io(e))? == 0 {
            return Err(self.protocol("the connection closed before the answer".into()));
        }
        serde_json::from_str(&buf).map_err(|e| self.protocol(e.to_string()))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn missing_and_stale_sockets_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.sock");
        let err = Client::connect(&path).err().unwrap();
        assert!(matches!(err, ClientError::NotRunning { .. }));
        assert!(err.to_string().contains("palisade agent --local-only"));
        drop(UnixListener::bind(&path).unwrap());
        let err = Client::connect(&path).err().unwrap();
        assert!(matches!(err, ClientError::Stale { .. }), "{err}");
    }

    #[test]
    fn call_reads_streamed_items_then_final() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("\"op\":\"list\""));
            s.write_all(b"{\"kind\":\"end\",\"count\":0}\n").unwrap();
        });
        let mut c = Client::connect(&path).unwrap();
        let mut items = 0;
        let fin = c
            .stream(&Request::List(Default::default()), |_| items += 1)
            .unwrap();
        assert_eq!(fin, Response::End { count: 0 });
        assert_eq!(items, 0);
        server.join().unwrap();
    }
}
