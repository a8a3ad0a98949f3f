import Conntrack
import Logging
import Health
import NetworkAddress
import Yams

/// Reads the agent's YAML through Yams' node tree, so each error names its key path and line and
/// unknown keys (a typo like `intervl`) are refused instead of silently ignored.
public enum YAMLConfigReader {
    public static func configuration(yaml text: String, file: String) throws(ConfigurationError) -> AgentConfiguration {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ConfigurationError(key: "", "empty configuration", file: file)
            }
            root = node
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError(key: "", "not valid YAML: \(error)", file: file)
        }
        let top = ConfigNode(node: root, path: "", file: file)
        let keys = try top.mapping(allowed: [
            "listen", "log_format", "log_level", "dry_run", "max_sockets_per_second", "max_sockets_burst", "reap_when_all_down", "pools",
            "netns",
        ])
        var configuration = AgentConfiguration()
        if let listen = keys["listen"] { configuration.listen = try listen.endpoint() }
        if let format = keys["log_format"] { configuration.logFormat = try format.choice(AgentConfiguration.LogFormat.self) }
        if let level = keys["log_level"] { configuration.logLevel = try level.choice(Logger.Level.self) }
        if let dryRun = keys["dry_run"] { configuration.dryRun = try dryRun.bool() }
        if let cap = keys["max_sockets_per_second"] { configuration.maxSocketsPerSecond = try cap.int(in: 1...10_000_000) }
        if let burst = keys["max_sockets_burst"] { configuration.maxSocketsBurst = try burst.int(in: 1...10_000_000) }
        if let guardOff = keys["reap_when_all_down"] { configuration.reapWhenAllDown = try guardOff.bool() }
        if let netns = keys["netns"] { configuration.netns = try namespaces(netns) }
        guard let pools = keys["pools"] else { throw top.error("pools", "missing: name at least one pool") }
        configuration.pools = try pools.list().map(pool)
        try ConfigurationValidator.validate(configuration, file: file)
        return configuration
    }

    static func pool(_ node: ConfigNode) throws(ConfigurationError) -> PoolConfiguration {
        let keys = try node.mapping(allowed: [
            "name", "backends", "protocols", "stuck_after", "probe", "netns", "reap_on", "drain_timeout", "early_detection",
            "rebalance", "rebalance_tolerance", "rebalance_rate", "rebalance_owner", "min_outage", "conntrack_zones", "heartbeat",
        ])
        guard let name = keys["name"] else { throw node.error("name", "missing") }
        guard let backends = keys["backends"] else { throw node.error("backends", "missing") }
        var pool = PoolConfiguration(
            name: try name.string(), backends: try backends.list().map { node throws(ConfigurationError) in try node.endpoint() })
        if let protocols = keys["protocols"] {
            pool.protocols = []
            for item in try protocols.list() {
                let name = try item.string()
                do { pool.protocols.formUnion(try ConfigValue.transports([name])) } catch { throw item.error(error.message) }
            }
        }
        if let stuck = keys["stuck_after"] { pool.stuckAfter = try stuck.duration() }
        if let reapOn = keys["reap_on"] { pool.reapOn = try reapOn.choice(ReapOn.self) }
        if let drain = keys["drain_timeout"] { pool.drainTimeout = try drain.duration() }
        if let outage = keys["min_outage"] { pool.minOutage = try outage.duration() }
        if let early = keys["early_detection"] { pool.earlyDetection = try early.bool() }
        if let heartbeat = keys["heartbeat"] { pool.heartbeat = try heartbeat.bool() }
        if let rebalance = keys["rebalance"] { pool.rebalance = try rebalance.bool() }
        if let tolerance = keys["rebalance_tolerance"] { pool.rebalanceTolerance = try tolerance.percent(in: 1...100) }
        if let owner = keys["rebalance_owner"] { pool.rebalanceOwner = try owner.parsed(RebalanceOwner.init(parsing:)) }
        if let rate = keys["rebalance_rate"] {
            pool.rebalanceRate = try rate.parsed { text throws(ConfigValue.Failure) in try ConfigValue.rate(text, maximum: 1000) }
        }
        if let probe = keys["probe"] { try read(probe: probe, into: &pool) }
        if let netns = keys["netns"] { pool.netns = try namespaces(netns) }
        if let zones = keys["conntrack_zones"] { pool.conntrackZones = try conntrackZones(zones) }
        return pool
    }

    /// `all`, or a list of zone numbers.
    static func conntrackZones(_ node: ConfigNode) throws(ConfigurationError) -> ConntrackZones {
        if case .scalar = node.node {
            let text = try node.string()
            guard text == "all" else { throw node.error("'\(text)' is not 'all' or a list of conntrack zones (0-65535)") }
            return .all
        }
        let zones = try node.list().map { item throws(ConfigurationError) in UInt16(try item.int(in: 0...65535)) }
        guard !zones.isEmpty else { throw node.error("names no zone: leave it out for zone 0, or write all") }
        return .only(Set(zones))
    }

    /// `all`, or a list of namespace files (`/run/netns/NAME`, `/proc/PID/ns/net`).
    static func namespaces(_ node: ConfigNode) throws(ConfigurationError) -> NamespaceSelection {
        if case .scalar = node.node {
            let text = try node.string()
            guard text == "all" else { throw node.error("'\(text)' is not 'all' or a list of namespace paths") }
            return .all
        }
        let items = try node.list()
        var paths: [String] = []
        for item in items {
            let path = try item.string()
            do { _ = try ConfigValue.namespaces([path]) } catch { throw item.error(error.message) }
            paths.append(path)
        }
        do { return try ConfigValue.namespaces(paths) } catch { throw node.error(error.message) }
    }

    static func read(probe node: ConfigNode, into pool: inout PoolConfiguration) throws(ConfigurationError) {
        let keys = try node.mapping(allowed: [
            "type", "port", "path", "expect_status", "interval", "timeout", "rise", "fall", "tls", "reuse", "reconnect_every",
        ])
        if let type = keys["type"] { pool.probe.kind = try type.choice(ProbeSpec.Kind.self) }
        if let port = keys["port"] { pool.probe.port = UInt16(try port.int(in: 1...65535)) }
        if let path = keys["path"] { pool.probe.path = try path.string() }
        if let statuses = keys["expect_status"] {
            pool.probe.expectStatus = Set(try statuses.list().map { node throws(ConfigurationError) in try node.int(in: 100...599) })
        }
        if let interval = keys["interval"] { pool.interval = try interval.duration() }
        if let timeout = keys["timeout"] { pool.probe.timeout = try timeout.duration() }
        if let rise = keys["rise"] { pool.rise = try rise.int(in: 1...100) }
        if let fall = keys["fall"] { pool.fall = try fall.int(in: 1...100) }
        if let reuse = keys["reuse"] { pool.probe.reuse = try reuse.bool() }
        if let every = keys["reconnect_every"] {
            pool.probe.reconnectEvery = try every.int(in: 1...10_000)
            guard pool.probe.reuse else { throw every.error("only used with reuse: true") }
        }
        if let tls = keys["tls"] {
            let tlsKeys = try tls.mapping(allowed: ["ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify"])
            pool.probe.tls = ProbeSpec.TLS(
                caFile: try tlsKeys["ca_file"]?.string(), certificateFile: try tlsKeys["cert_file"]?.string(),
                keyFile: try tlsKeys["key_file"]?.string(), serverName: try tlsKeys["server_name"]?.string(),
                insecureSkipVerify: try tlsKeys["insecure_skip_verify"]?.bool() ?? false)
        }
    }

}

/// A node with the path that leads to it, for error messages.
struct ConfigNode {
    let node: Node
    let path: String
    let file: String

    var line: Int? { node.mark.map { $0.line } }

    func error(_ key: String, _ message: String) -> ConfigurationError {
        ConfigurationError(key: path.isEmpty ? key : "\(path).\(key)", message, file: file, line: line)
    }

    func error(_ message: String) -> ConfigurationError {
        ConfigurationError(key: path, message, file: file, line: line)
    }

    func mapping(allowed: Set<String>) throws(ConfigurationError) -> [String: ConfigNode] {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping of keys") }
        var keys: [String: ConfigNode] = [:]
        for (keyNode, value) in mapping {
            let key = keyNode.string ?? "?"
            let child = ConfigNode(node: value, path: path.isEmpty ? key : "\(path).\(key)", file: file)
            guard allowed.contains(key) else {
                throw ConfigurationError(
                    key: child.path, "unknown key (known: \(allowed.sorted().joined(separator: ", ")))",
                    file: file, line: keyNode.mark.map { $0.line })
            }
            guard keys[key] == nil else { throw child.error("given twice") }
            keys[key] = child
        }
        return keys
    }

    func list() throws(ConfigurationError) -> [ConfigNode] {
        guard case .sequence(let sequence) = node else { throw error("expected a list") }
        return sequence.enumerated().map { ConfigNode(node: $1, path: "\(path)[\($0)]", file: file) }
    }

    func string() throws(ConfigurationError) -> String {
        guard case .scalar(let scalar) = node else { throw error("expected a single value") }
        return scalar.string
    }

    func bool() throws(ConfigurationError) -> Bool {
        switch try string().lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        case let other: throw error("'\(other)' is not true or false")
        }
    }

    func int(in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        try parsed { text throws(ConfigValue.Failure) in try ConfigValue.int(text, in: range) }
    }

    func percent(in range: ClosedRange<Double>) throws(ConfigurationError) -> Double {
        try parsed { text throws(ConfigValue.Failure) in try ConfigValue.percent(text, in: range) }
    }

    func duration() throws(ConfigurationError) -> Duration {
        try parsed { text throws(ConfigValue.Failure) in try ConfigValue.duration(text) }
    }

    func endpoint() throws(ConfigurationError) -> Endpoint {
        try parsed { text throws(ConfigValue.Failure) in try ConfigValue.endpoint(text) }
    }

    func choice<T: RawRepresentable & CaseIterable>(_: T.Type) throws(ConfigurationError) -> T where T.RawValue == String {
        try parsed { text throws(ConfigValue.Failure) in try ConfigValue.choice(text, of: T.self) }
    }

    /// This scalar through one of ConfigValue's parsers, its failure placed at this node.
    func parsed<Value>(_ parse: (String) throws(ConfigValue.Failure) -> Value) throws(ConfigurationError) -> Value {
        let text = try string()
        do { return try parse(text) } catch { throw self.error(error.message) }
    }
}

extension Node {
    var string: String? {
        if case .scalar(let scalar) = self { return scalar.string }
        return nil
    }
}
