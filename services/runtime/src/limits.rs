//! Process resource limits.

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) towards `want` descriptors: the soft
/// limit up to the hard one for anyone, and the hard limit too where the process may (root, or
/// `CAP_SYS_RESOURCE`). Returns the soft limit in force afterwards. A socket server holds one
/// descriptor per connection, and container runtimes and shells often start it with far fewer
/// than its connection cap; children inherit the raised limit.
pub fn raise_open_file_limit(want: u64) -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (current, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if current >= want {
        return Ok(current);
    }
    let raised = |soft: u64, max: u64| setrlimit(Resource::RLIMIT_NOFILE, soft, max).map(|()| soft);
    raised(want, hard.max(want))
        .or_else(|_| raised(want.min(hard), hard))
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_never_drops_and_reaches_at_least_the_current_one() {
        let before = raise_open_file_limit(0).unwrap();
        let after = raise_open_file_limit(before + 1).unwrap_or(before);
        assert!(after >= before);
        assert_eq!(raise_open_file_limit(0).unwrap(), after);
    }
}
