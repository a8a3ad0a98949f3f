import Durations
import Health
import OS

/// Rules that span keys: unique names, timeouts within intervals, readable TLS files.
public enum ConfigurationValidator {
    public static let minimumStuckAfter: Duration = .seconds(2)

    public static func validate(_ configuration: AgentConfiguration, file: String?) throws(ConfigurationError) {
        guard !configuration.pools.isEmpty else { throw ConfigurationError(key: "pools", "name at least one pool", file: file) }
        var names = Set<String>()
        for (index, pool) in configuration.pools.enumerated() {
            let key = "pools[\(index)]"
            guard !pool.name.isEmpty else { throw ConfigurationError(key: "\(key).name", "must not be empty", file: file) }
            guard names.insert(pool.name).inserted else {
                throw ConfigurationError(key: "\(key).name", "'\(pool.name)' is used by another pool", file: file)
            }
            guard !pool.backends.isEmpty else { throw ConfigurationError(key: "\(key).backends", "name at least one backend", file: file) }
            guard Set(pool.backends).count == pool.backends.count else {
                throw ConfigurationError(key: "\(key).backends", "a backend is listed twice", file: file)
            }
            guard !pool.protocols.isEmpty else { throw ConfigurationError(key: "\(key).protocols", "name tcp, udp or both", file: file) }
            guard pool.interval >= .milliseconds(10) else {
                throw ConfigurationError(key: "\(key).probe.interval", "must be at least 10ms", file: file)
            }
            guard pool.probe.timeout > .zero, pool.probe.timeout <= pool.interval else {
                throw ConfigurationError(
                    key: "\(key).probe.timeout", "must be above 0 and at most the interval (\(DurationParsing.format(pool.interval)))",
                    file: file)
            }
            // A live path that loses a few segments in a row retransmits after 0.2, 0.6 and 1.4 s:
            // below 2 s the stuck detector would condemn connections that TCP is about to recover.
            guard pool.stuckAfter == .zero || pool.stuckAfter >= Self.minimumStuckAfter else {
                throw ConfigurationError(
                    key: "\(key).stuck_after", "must be 0 (off) or at least \(DurationParsing.format(Self.minimumStuckAfter))",
                    file: file)
            }
            guard pool.minOutage <= .seconds(60) else {
                throw ConfigurationError(key: "\(key).min_outage", "must be at most 60s", file: file)
            }
            guard pool.probe.path.hasPrefix("/") else {
                throw ConfigurationError(key: "\(key).probe.path", "'\(pool.probe.path)' must start with /", file: file)
            }
            guard !pool.probe.expectStatus.isEmpty else {
                throw ConfigurationError(key: "\(key).probe.expect_status", "name at least one status", file: file)
            }
            if pool.probe.reuse && pool.probe.kind == .tcp {
                throw ConfigurationError(
                    key: "\(key).probe.reuse", "only for http and https probes: a tcp probe's connection is all it tests", file: file)
            }
            let tls = pool.probe.tls
            for (name, path) in [("ca_file", tls.caFile), ("cert_file", tls.certificateFile), ("key_file", tls.keyFile)] {
                guard let path else { continue }
                guard FileStatus.isReadable(path) else {
                    throw ConfigurationError(key: "\(key).probe.tls.\(name)", "'\(path)' is not a readable file", file: file)
                }
            }
            guard (tls.certificateFile == nil) == (tls.keyFile == nil) else {
                throw ConfigurationError(key: "\(key).probe.tls", "cert_file and key_file go together", file: file)
            }
            if pool.probe.kind != .https && (tls.caFile != nil || tls.certificateFile != nil || tls.serverName != nil) {
                throw ConfigurationError(key: "\(key).probe.tls", "only used with probe type https", file: file)
            }
        }
    }
}
