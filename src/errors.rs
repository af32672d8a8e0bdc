//! How an error is told to a human: one line with its message and every cause beneath it.

/// `error: cause: deeper cause`, the way `anyhow`'s `{:#}` prints at the binary's edge.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their source's message in their own; say it once.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_joined_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("sending to {0}")]
        struct Outer(&'static str, #[source] std::io::Error);
        assert_eq!(super::chain(&Outer("nsqd:4150", io)), "sending to nsqd:4150: connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("reading: {0}")]
        struct Repeats(#[source] std::io::Error);
        let io = std::io::Error::other("disk on fire");
        assert_eq!(super::chain(&Repeats(io)), "reading: disk on fire");
    }
}
