import CBuildInfo

/// The one place the version is written: the binary, `make dist`'s package and tarball names, the
/// image tag the deployment files name, and build_info all read it from here.
public enum ConnReaperVersion {
    public static let current = "0.1.0"

    /// The git revision of the build (`make dist`, `make release`), or "unknown".
    public static let revision = String(cString: conn_reaper_revision())

    /// What `--version` prints.
    public static let description = "\(current) (revision \(revision))"
}
