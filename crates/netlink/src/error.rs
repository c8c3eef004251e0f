use std::fmt;

/// A netlink failure: what was being done, the errno, and what the kernel
/// said about it (extended ack message), if anything.
///
/// Boxed inside, so that results carrying it stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    errno: i32,
    context: String,
    kernel: Option<String>,
    more: usize,
}

impl Error {
    /// An error with a positive errno value (`libc::ENOENT`, ...).
    pub fn new(context: impl Into<String>, errno: i32) -> Error {
        Error(Box::new(Inner {
            errno,
            context: context.into(),
            kernel: None,
            more: 0,
        }))
    }

    /// The error of the last failed system call.
    pub(crate) fn last_os(context: impl Into<String>) -> Error {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        Error::new(context, errno)
    }

    pub(crate) fn with_kernel_message(mut self, msg: Option<String>) -> Error {
        self.0.kernel = msg.filter(|m| !m.is_empty());
        self
    }

    /// The same failure, said of `context` (what the caller was doing).
    pub(crate) fn with_context(mut self, context: impl Into<String>) -> Error {
        self.0.context = context.into();
        self
    }

    pub(crate) fn with_more(mut self, more: usize) -> Error {
        self.0.more = more;
        self
    }

    /// The positive errno value.
    pub fn errno(&self) -> i32 {
        self.0.errno
    }

    /// What was being done, e.g. `NEWSETELEM inet palisade block4, element
    /// 198.18.0.5`.
    pub fn context(&self) -> &str {
        &self.0.context
    }

    /// The kernel's own explanation (netlink extended ack), if it gave one.
    pub fn kernel_message(&self) -> Option<&str> {
        self.0.kernel.as_deref()
    }

    /// How many other messages of the same batch failed too.
    pub fn more(&self) -> usize {
        self.0.more
    }

    /// True if the kernel answered `ENOENT`: the table, chain, set or element
    /// does not exist.
    pub fn is_not_found(&self) -> bool {
        self.0.errno == libc::ENOENT
    }

    /// True if the kernel answered `EPERM` or `EACCES`: the process lacks
    /// `CAP_NET_ADMIN` in the socket's network namespace.
    pub fn is_permission_denied(&self) -> bool {
        self.0.errno == libc::EPERM || self.0.errno == libc::EACCES
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.context, explain(self.0.errno))?;
        if let Some(k) = &self.0.kernel {
            write!(f, " (kernel: {k})")?;
        }
        if self.0.more > 0 {
            write!(
                f,
                "; {} more message(s) of the same batch failed too",
                self.0.more
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// A short explanation of an errno as the netfilter and sock_diag netlink
/// interfaces use it, naming the constant so it can be looked up.
pub fn explain(errno: i32) -> String {
    let text = match errno {
        libc::EPERM | libc::EACCES => {
            "operation not permitted (EPERM): changing the firewall or killing connections needs root (CAP_NET_ADMIN)"
        }
        libc::EEXIST => "already exists (EEXIST)",
        libc::ENOENT => "no such table, set, chain, element or entry (ENOENT)",
        libc::EOPNOTSUPP => {
            "not supported by this kernel (EOPNOTSUPP): an nf_tables feature or module is missing"
        }
        libc::ENOSPC => "the set is full (ENOSPC): raise its size or ban fewer addresses",
        libc::E2BIG => "too many elements (E2BIG): the set is full",
        libc::EBUSY => "in use (EBUSY)",
        libc::EINVAL => "invalid argument (EINVAL): the kernel rejected the message",
        libc::EMSGSIZE => "message too large (EMSGSIZE)",
        libc::ENOBUFS => "netlink buffer overflow (ENOBUFS): some kernel replies were lost",
        libc::ENOMEM => "out of memory (ENOMEM)",
        libc::EPROTONOSUPPORT => {
            "netlink protocol not supported (EPROTONOSUPPORT): is the kernel built with nf_tables/conntrack/sock_diag?"
        }
        libc::EAFNOSUPPORT => "address family not supported (EAFNOSUPPORT)",
        libc::EINTR => "interrupted by concurrent changes (EINTR); retry",
        libc::EAGAIN => "no reply from the kernel in time (EAGAIN)",
        libc::ERANGE => "value out of range (ERANGE)",
        libc::ELOOP => "loop detected (ELOOP)",
        _ => {
            return format!(
                "{} (errno {errno})",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    };
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_errno_and_context() {
        let e = Error::new(
            "NEWSETELEM inet palisade block4, element 198.18.0.5",
            libc::EEXIST,
        )
        .with_kernel_message(Some("element exists".into()))
        .with_more(2);
        let s = e.to_string();
        assert!(
            s.starts_with(
                "NEWSETELEM inet palisade block4, element 198.18.0.5: already exists (EEXIST)"
            ),
            "{s}"
        );
        assert!(s.contains("kernel: element exists"));
        assert!(s.contains("2 more"));
        assert!(
            Error::new("x", libc::EPERM)
                .to_string()
                .contains("needs root")
        );
        assert!(
            Error::new("x", libc::ENOSPC)
                .to_string()
                .contains("set is full")
        );
        assert!(
            Error::new("x", libc::EOPNOTSUPP)
                .to_string()
                .contains("EOPNOTSUPP")
        );
        assert!(Error::new("x", libc::ENOENT).is_not_found());
        assert!(Error::new("x", 1234).to_string().contains("errno 1234"));
    }
}
