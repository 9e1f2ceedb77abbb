//! The saved target: which admin API `gcf` talks to, with which bearer token, and which
//! org and space the placement commands act on.
//!
//! Owns: the location of `config.toml` (`$GCF_HOME`, else `~/.config/gcf`), its format
//! (a config written before `gcf target` existed still loads), writing it privately
//! (directory 0700, file 0600, replaced atomically), reading the token file given to
//! `gcf api --token-file`, and what counts as an org or space name.
//!
//! Must never: talk to the network, print or log the token (the `Debug` impl redacts it),
//! or leave a half-written config behind.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::UsageError;

/// Environment variable naming the directory that holds `config.toml`.
pub const HOME_ENV: &str = "GCF_HOME";

/// File name of the saved target inside the config directory.
pub const CONFIG_FILE: &str = "config.toml";

/// First lines of every saved config, so whoever opens it knows it is secret.
const CONFIG_HEADER: &str = "# Written by `gcf api` and `gcf target`. It holds an admin bearer token: keep this file private.\n";

/// A saved target. Unknown keys are tolerated (not `deny_unknown_fields`) because gcf
/// writes this file itself, and an older gcf must still read what a newer one wrote.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Base URL of a node's admin API, normalised by [`normalize_url`] (no trailing `/`).
    pub api: String,
    /// Bearer token for `/v1/*`; absent when `gcf api` was run without `--token-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The org set by `gcf target -o`; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The space set by `gcf target -s`; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<String>,
}

#[cfg(test)]
impl Target {
    /// A target for `api` with `token` and no org or space.
    pub fn new(api: String, token: Option<String>) -> Self {
        Self {
            api,
            token,
            org: None,
            space: None,
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("api", &self.api)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("org", &self.org)
            .field("space", &self.space)
            .finish()
    }
}

/// Where the config lives: `$GCF_HOME/config.toml` when `GCF_HOME` is set and not
/// empty, else `~/.config/gcf/config.toml`.
pub fn config_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(HOME_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join(CONFIG_FILE));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| UsageError::new(format!("neither {HOME_ENV} nor HOME is set")))?;
    Ok(PathBuf::from(home)
        .join(".config")
        .join("gcf")
        .join(CONFIG_FILE))
}

/// Read the saved target; `Ok(None)` when no config file exists yet.
///
/// A config that cannot be parsed is a config error (exit 2) naming the file.
pub fn load(path: &Path) -> Result<Option<Target>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(UsageError::new(format!("{}: {err}", path.display())).into()),
    };
    let target: Target = toml::from_str(&text).map_err(|err| {
        UsageError::new(format!("{}: {}", path.display(), err.message().trim_end()))
    })?;
    Ok(Some(target))
}

/// Save `target` at `path`: create the directory (0700), write a temporary file (0600)
/// next to it and rename it over the old config, so a crash never leaves half a file.
pub fn save(path: &Path, target: &Target) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let body = toml::to_string(target).context("encoding the config")?;
    let tmp = path.with_extension(format!("toml.tmp.{}", std::process::id()));
    let written = write_private(&tmp, &format!("{CONFIG_HEADER}{body}"))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = written {
        // Best effort: the temporary file may not exist if opening it failed.
        let _ = fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Read a bearer token from `path`, trimmed. A missing, empty or malformed token file is
/// a usage error (exit 2) naming the flag and the file.
pub fn read_token_file(path: &Path) -> Result<String> {
    let at_fault = || format!("--token-file {}", path.display());
    let text = fs::read_to_string(path)
        .map_err(|err| UsageError::new(format!("{}: {err}", at_fault())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(UsageError::new(format!("{}: the file is empty", at_fault())).into());
    }
    // A token goes into an HTTP header: a control character (a second line, say) would
    // make every request fail later with a confusing error.
    if token.chars().any(char::is_control) {
        return Err(UsageError::new(format!(
            "{}: the token must be one line without control characters",
            at_fault()
        ))
        .into());
    }
    Ok(token.to_owned())
}

/// Check an org or space name given to `gcf target` (`flag` names it in the error):
/// surrounding whitespace is dropped; an empty name or one with control characters is a
/// usage error.
pub fn check_name(flag: &str, name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(UsageError::new(format!("{flag}: the name is empty")).into());
    }
    if name.chars().any(char::is_control) {
        return Err(UsageError::new(format!(
            "{flag} '{}': the name must not contain control characters",
            name.escape_debug()
        ))
        .into());
    }
    Ok(name.to_owned())
}

/// Check and normalise an API URL given to `gcf api`.
///
/// Like `cf api`, a URL without a scheme means `https://`. Only `http` and `https` are
/// accepted; query strings and fragments are refused; a trailing `/` is dropped so paths
/// can be appended.
pub fn normalize_url(input: &str) -> Result<String> {
    let input = input.trim();
    let with_scheme = if input.contains("://") {
        input.to_owned()
    } else {
        format!("https://{input}")
    };
    let bad = |why: &str| UsageError::new(format!("URL '{input}': {why}"));
    let url = reqwest::Url::parse(&with_scheme).map_err(|err| bad(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https").into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("a host is required").into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed").into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("gcf-test-{}-{name}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn is_usage(err: &anyhow::Error) -> bool {
        err.downcast_ref::<UsageError>().is_some()
    }

    #[test]
    fn save_then_load_round_trips_privately() {
        let tmp = TempDir::new("roundtrip");
        // A directory that does not exist yet, two levels deep.
        let path = tmp.0.join("a").join("b").join(CONFIG_FILE);
        assert_eq!(load(&path).unwrap(), None);

        let target = Target {
            org: Some("demo".into()),
            space: Some("prod".into()),
            ..Target::new("http://127.0.0.1:9090".into(), Some("s3cret".into()))
        };
        save(&path, &target).unwrap();
        assert_eq!(load(&path).unwrap(), Some(target));

        // Overwriting keeps one file (no temporary left behind) and drops the token.
        let no_token = Target::new("https://admin.example.com".into(), None);
        save(&path, &no_token).unwrap();
        assert_eq!(load(&path).unwrap(), Some(no_token));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
    }

    #[test]
    fn broken_config_is_a_config_error_naming_the_file() {
        let tmp = TempDir::new("broken");
        let path = tmp.0.join(CONFIG_FILE);
        fs::write(&path, "api = [").unwrap();
        let err = load(&path).unwrap_err();
        assert!(is_usage(&err));
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let target = Target::new("http://x".into(), Some("s3cret".into()));
        let text = format!("{target:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    /// A config written before `gcf target` existed (no org, no space) still loads, and
    /// one written by a newer gcf with keys this one does not know loads too.
    #[test]
    fn old_and_newer_configs_load() {
        let tmp = TempDir::new("old");
        let path = tmp.0.join(CONFIG_FILE);
        fs::write(
            &path,
            "# Written by `gcf api`. It holds an admin bearer token: keep this file private.\n\
             api = \"http://127.0.0.1:9090\"\ntoken = \"t\"\n",
        )
        .unwrap();
        assert_eq!(
            load(&path).unwrap(),
            Some(Target::new(
                "http://127.0.0.1:9090".into(),
                Some("t".into())
            ))
        );
        fs::write(&path, "api = \"http://x\"\nspace = \"prod\"\nfuture = 1\n").unwrap();
        let target = load(&path).unwrap().unwrap();
        assert_eq!((target.org, target.space.as_deref()), (None, Some("prod")));
    }

    #[test]
    fn org_and_space_names_are_checked() {
        assert_eq!(check_name("-o", "  demo ").unwrap(), "demo");
        assert_eq!(check_name("-s", "my space").unwrap(), "my space");
        for bad in ["", "  ", "a\nb", "x\u{1b}[2J"] {
            let err = check_name("-o", bad).unwrap_err();
            assert!(
                is_usage(&err) && err.to_string().starts_with("-o"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let tmp = TempDir::new("token");
        let path = tmp.0.join("admin.token");
        fs::write(&path, "  s3cret\n\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");

        fs::write(&path, " \n").unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(
            is_usage(&err) && err.to_string().contains("--token-file"),
            "{err}"
        );

        fs::write(&path, "two\nlines").unwrap();
        assert!(is_usage(&read_token_file(&path).unwrap_err()));

        let err = read_token_file(&tmp.0.join("missing")).unwrap_err();
        assert!(
            is_usage(&err) && err.to_string().contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn urls_are_normalised_like_cf() {
        assert_eq!(
            normalize_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            normalize_url("admin.example.com").unwrap(),
            "https://admin.example.com"
        );
        assert_eq!(
            normalize_url("https://h.example.com/prefix/").unwrap(),
            "https://h.example.com/prefix"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://x/?a=b",
            "http://x/#f",
            "http://[::1",
        ] {
            let err = normalize_url(bad).unwrap_err();
            assert!(is_usage(&err), "{bad}: {err}");
        }
    }
}
