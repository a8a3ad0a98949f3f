import NetworkAddress

/// Who made a connection, as sock_diag tells without a walk of /proc: its socket's uid and, from
/// kernel 5.7 on, its cgroup (a container, a systemd unit).
public struct ConnectionOwner: Hashable, Sendable, CustomStringConvertible {
    public var uid: UInt32
    public var cgroup: UInt64?

    public init(uid: UInt32, cgroup: UInt64? = nil) {
        self.uid = uid
        self.cgroup = cgroup
    }

    public var description: String { cgroup.map { "uid \(uid) cgroup \($0)" } ?? "uid \(uid)" }
}

/// Whose connections a rebalance may end (pool option `rebalance_owner`). A rebalance moves the
/// balancer's connections; a local client that talks to one backend directly (a kubectl, a
/// controller on the node) is none of its business, and ending its connections is harm.
public enum RebalanceOwner: Sendable, Equatable, CustomStringConvertible {
    /// The owner (uid and cgroup) whose connections reach the most backends of the pool, then the
    /// most connections: a balancer spreads over every backend, a direct client mostly talks to one.
    case auto
    /// Every connection of this uid (nginx's workers run as one, HAProxy as another).
    case uid(UInt32)
    /// Every connection toward the pool, whoever made it.
    case any

    /// `auto`, `any` or `uid:N`.
    public init(parsing text: String) throws(ConfigValue.Failure) {
        switch text {
        case "auto": self = .auto
        case "any": self = .any
        default:
            guard text.hasPrefix("uid:"), let uid = UInt32(text.dropFirst(4)), uid != UInt32.max else {
                throw ConfigValue.Failure("'\(text)' is not auto, any or uid:N (a user id)")
            }
            self = .uid(uid)
        }
    }

    public var description: String {
        switch self {
        case .auto: "auto"
        case .any: "any"
        case .uid(let uid): "uid:\(uid)"
        }
    }
}

/// The connections one rebalancing episode may count and end, chosen at its first census.
public enum RebalanceScope: Sendable, Equatable, CustomStringConvertible {
    case every
    case uid(UInt32)
    case owner(ConnectionOwner)

    /// What `owner` means for this census: `auto` picks from the connections (every connection when
    /// there are none).
    public init(_ owner: RebalanceOwner, connections: [ConnectionSample]) {
        switch owner {
        case .any: self = .every
        case .uid(let uid): self = .uid(uid)
        case .auto:
            var reach: [ConnectionOwner: (backends: Set<Endpoint>, connections: Int)] = [:]
            for connection in connections {
                reach[connection.owner, default: ([], 0)].backends.insert(connection.backend)
                reach[connection.owner, default: ([], 0)].connections += 1
            }
            // The most backends, then the most connections; then the lowest uid and cgroup, so the
            // pick is the same every run.
            let best = reach.max { a, b in
                (a.value.backends.count, a.value.connections, b.key.uid, b.key.cgroup ?? 0)
                    < (b.value.backends.count, b.value.connections, a.key.uid, a.key.cgroup ?? 0)
            }
            self = best.map { .owner($0.key) } ?? .every
        }
    }

    public func holds(_ connection: ConnectionSample) -> Bool {
        switch self {
        case .every: true
        case .uid(let uid): connection.owner.uid == uid
        case .owner(let owner): connection.owner == owner
        }
    }

    public var description: String {
        switch self {
        case .every: "any"
        case .uid(let uid): "uid \(uid)"
        case .owner(let owner): owner.description
        }
    }
}
