import OS
import Agent
import NetworkAddress

/// What is true of a backend, whatever the agent believes.
public enum Condition: String, Sendable, CaseIterable {
    /// Answers probes, its streams flow.
    case alive
    /// Power lost: nothing answers, nothing flows, no FIN, no RST.
    case dead
    /// Answers probes with a 503 while it keeps serving every stream (kube-apiserver's shutdown delay).
    case draining
    /// Its /readyz times out under load while it keeps serving every stream.
    case overloaded
    /// Nothing gets through for a while (a bond failover, a VM paused for live migration), then all of it does.
    case paused
    /// Back on a lossy path: one probe in three lost, its streams flowing.
    case lossy
    /// Its health endpoint is gone (the probe port refuses) while the service port serves.
    case healthPortGone = "health_port_gone"

    /// Its data path carries segments.
    public var flows: Bool { self != .dead && self != .paused }
}

/// One scripted happening; a world is a seed's list of them, and shrinking removes them one by one.
public enum Happening: Sendable, CustomStringConvertible {
    /// From `at`, the backend is in this condition (until its next happening).
    case becomes(at: Int, backend: Int, Condition)
    /// The prober's own fault (EADDRNOTAVAIL, EMFILE) for this long: every probe fails locally.
    case proberFault(at: Int, lasting: Int)
    /// The network next to the prober drops probes to every backend, each a little after the last
    /// (a local rule, a saturated link): nothing answers the prober while every stream flows.
    case probePathFault(at: Int, lasting: Int, stagger: Int)
    /// The look at connections fails (a namespace unreadable, a dump cut short) for this long.
    case unreadable(at: Int, lasting: Int)
    /// `systemctl reload` with the same configuration.
    case reload(at: Int)
    /// One connection toward the backend loses its flow's state on the path (incident 3): nothing it
    /// sends or is sent arrives again, while the backend answers probes and serves every other one.
    case blackhole(at: Int, backend: Int)
    /// A fault on this side drops every established connection's segments, both ways, while new
    /// connections (the probes) get through: a local rule, a conntrack glitch, our NIC.
    case localFault(at: Int, lasting: Int)
    /// One backend's established connections lose every segment for a while (a flapping link, a
    /// congested switch port) while its probes, new connections, get through.
    case dataLoss(at: Int, backend: Int, lasting: Int)

    public var at: Int {
        switch self {
        case .becomes(let at, _, _), .proberFault(let at, _), .probePathFault(let at, _, _), .unreadable(let at, _), .reload(let at),
            .blackhole(let at, _), .localFault(let at, _), .dataLoss(let at, _, _):
            return at
        }
    }

    public var description: String {
        switch self {
        case .becomes(let at, let backend, let condition): "\(at) ms: backend \(backend) \(condition.rawValue)"
        case .proberFault(let at, let lasting): "\(at) ms: prober fault for \(lasting) ms"
        case .probePathFault(let at, let lasting, let stagger): "\(at) ms: probe path fault for \(lasting) ms, \(stagger) ms apart"
        case .unreadable(let at, let lasting): "\(at) ms: connections unreadable for \(lasting) ms"
        case .reload(let at): "\(at) ms: reload"
        case .blackhole(let at, let backend): "\(at) ms: a connection to backend \(backend) blackholed"
        case .localFault(let at, let lasting): "\(at) ms: local fault on established connections for \(lasting) ms"
        case .dataLoss(let at, let backend, let lasting): "\(at) ms: backend \(backend)'s connections lose every segment for \(lasting) ms"
        }
    }
}

/// A seeded world: pools, backends, what happens to them, and the agent's configuration.
public struct World: Sendable {
    public var seed: UInt64
    public var configuration: AgentConfiguration
    /// Every backend endpoint; pools name them by index.
    public var backends: [Endpoint]
    public var poolMembers: [[Int]]
    /// Connections each backend holds at the start, and the share of them that stream.
    public var connections: [Int]
    public var streamingShare: Double
    public var happenings: [Happening]
    public var horizon: Int
    /// The stuck detector's world: `stuck_after` (nil: off), and what the connections write.
    public var stuck: StuckSetting

    /// Connections that write (a request, a lease renewal) and wait for the answer, and peers that
    /// stop reading (a shut window). Drawn from a stream of its own, so that the worlds drawn before
    /// the stuck detector was modelled stay what they were.
    public struct StuckSetting: Sendable {
        public var afterMilliseconds: Int?
        /// The share of connections that write, and how often each may (chosen per connection).
        public var writerShare: Double
        public var writePeriods: [Int]
        public var zeroWindowShare: Double
    }

    /// A random world from `seed`: 1 or 2 pools (the second may share a backend), 1 to 4 backends,
    /// probing from 200 ms x 2 to 2 s x 3, a small budget at times, and up to 6 happenings.
    public static func generate(seed: UInt64) -> World {
        var random = SimRandom(seed: seed)
        let count = random.int(in: 1...4)
        let backends = (0..<count).map { Endpoint(address: .v4(0x0A00_0001 + UInt32($0)), port: 6443) }
        var members = [Array(0..<count)]
        if count >= 2, random.chance(0.25) {
            // A second pool holding one backend of the first, and maybe one of its own.
            members.append(random.chance(0.5) ? [count - 1] : [count - 2, count - 1])
        }
        var configuration = AgentConfiguration()
        configuration.maxSocketsBurst = random.chance(0.3) ? random.int(in: 3...40) : 5_000
        configuration.maxSocketsPerSecond = random.chance(0.3) ? random.int(in: 2...50) : 500
        let probing = random.pick([(200, 150, 2), (1_000, 500, 2), (2_000, 1_000, 3), (500, 200, 1), (200, 150, 3)])
        let riseChoice = random.int(in: 1...2)
        let drain = random.pick([0, 3_000, 10_000, 120_000])
        let minOutage = random.pick([1_000, 500, 2_000])
        let early = random.chance(0.6)
        let healthPort = random.chance(0.15)
        configuration.pools = members.enumerated().map { index, members in
            var pool = PoolConfiguration(name: "pool\(index)", backends: members.map { backends[$0] })
            pool.interval = .milliseconds(probing.0)
            pool.probe.timeout = .milliseconds(probing.1)
            pool.fall = probing.2
            pool.rise = riseChoice
            pool.drainTimeout = .milliseconds(drain)
            pool.minOutage = .milliseconds(minOutage)
            pool.earlyDetection = early
            if healthPort { pool.probe.port = 8080 }
            return pool
        }
        let horizon = 60_000
        var happenings: [Happening] = []
        for _ in 0..<random.int(in: 1...6) {
            let at = random.int(in: 1_000...40_000)
            switch random.int(in: 0...9) {
            case 0...5:
                var condition = random.pick(Condition.allCases.filter { $0 != .alive })
                if condition == .healthPortGone, !healthPort { condition = .dead }
                let backend = random.int(in: 0..<count)
                happenings.append(.becomes(at: at, backend: backend, condition))
                if condition == .paused {
                    // A short pause (well under the floor) or a long one (well over it).
                    let floor = min(minOutage, probing.0 * (probing.2 - 1))
                    let short = max(50, floor - 400)
                    let lasting = random.chance(0.6) ? random.int(in: 50...max(50, short)) : floor + random.int(in: 600...5_000)
                    happenings.append(.becomes(at: at + lasting, backend: backend, random.chance(0.7) ? .alive : .lossy))
                } else if random.chance(0.5) {
                    happenings.append(
                        .becomes(at: at + random.int(in: 500...15_000), backend: backend, random.chance(0.7) ? .alive : .lossy))
                }
            case 6: happenings.append(.proberFault(at: at, lasting: random.int(in: 100...8_000)))
            case 7: happenings.append(.probePathFault(at: at, lasting: random.int(in: 500...8_000), stagger: random.int(in: 0...600)))
            case 8: happenings.append(.unreadable(at: at, lasting: random.int(in: 200...8_000)))
            default: happenings.append(.reload(at: at))
            }
        }
        let connections = backends.map { _ in random.int(in: 0...30) }
        let streamingShare = random.pick([1.0, 0.7, 0.0])
        var stuckRandom = SimRandom(seed: seed ^ 0x57C4_D37E)
        var stuck = StuckSetting(afterMilliseconds: nil, writerShare: 0, writePeriods: [], zeroWindowShare: 0)
        if stuckRandom.chance(0.5) {
            let after = stuckRandom.pick([2_000, 3_000])
            stuck = StuckSetting(
                afterMilliseconds: after, writerShare: stuckRandom.pick([0.3, 1.0]),
                writePeriods: stuckRandom.pick([[200], [1_000], [200, 6_000]]),
                zeroWindowShare: stuckRandom.pick([0, 0.1]))
            for index in configuration.pools.indices { configuration.pools[index].stuckAfter = .milliseconds(after) }
            for _ in 0..<stuckRandom.int(in: 0...3) {
                let at = stuckRandom.int(in: 1_000...40_000)
                switch stuckRandom.int(in: 0...3) {
                case 0: happenings.append(.blackhole(at: at, backend: stuckRandom.int(in: 0..<count)))
                case 1: happenings.append(.localFault(at: at, lasting: stuckRandom.pick([300, 1_500, 4_000, 9_000])))
                case 2:
                    happenings.append(.dataLoss(at: at, backend: stuckRandom.int(in: 0..<count), lasting: stuckRandom.int(in: 300...1_500)))
                default:
                    // A burst of loss on one backend's path (a flapping link): writes caught in it retransmit.
                    let backend = stuckRandom.int(in: 0..<count)
                    happenings.append(.becomes(at: at, backend: backend, .paused))
                    happenings.append(.becomes(at: at + stuckRandom.int(in: 300...1_200), backend: backend, .alive))
                }
            }
        }
        return World(
            seed: seed, configuration: configuration, backends: backends, poolMembers: members,
            connections: connections, streamingShare: streamingShare,
            happenings: happenings.sorted { $0.at < $1.at }, horizon: horizon, stuck: stuck)
    }
}

extension World {
    /// The knobs a failing world ran with, for its report.
    public var setting: String {
        let configuration = configuration
        let pools = configuration.pools.map { pool in
            "\(pool.name) \(pool.backends.count) backends, probes \(pool.interval) x \(pool.fall) (timeout \(pool.probe.timeout), rise \(pool.rise)), "
                + "min_outage \(pool.minOutage), drain \(pool.drainTimeout), early \(pool.earlyDetection)"
                + (pool.probe.port.map { ", health port \($0)" } ?? "")
        }
        let stuck =
            self.stuck.afterMilliseconds.map {
                "; stuck_after \($0) ms, writers \(self.stuck.writerShare) every \(self.stuck.writePeriods) ms, shut windows \(self.stuck.zeroWindowShare)"
            } ?? ""
        return "budget \(configuration.maxSocketsBurst) burst, \(configuration.maxSocketsPerSecond)/s; connections \(connections), "
            + "streaming \(streamingShare); " + pools.joined(separator: "; ") + stuck
    }
}

/// One seeded source for everything random in a world (the policy's own SplitMix64), so a seed
/// replays exactly.
public struct SimRandom: Sendable {
    private var generator: SeededRandom

    public init(seed: UInt64) { generator = SeededRandom(seed: seed) }

    public mutating func next() -> UInt64 { generator.next() }

    public mutating func int(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.upperBound - range.lowerBound + 1))
    }

    public mutating func int(in range: Range<Int>) -> Int { int(in: range.lowerBound...(range.upperBound - 1)) }

    public mutating func chance(_ probability: Double) -> Bool { Double(next() % 1_000_000) / 1_000_000 < probability }

    public mutating func pick<T>(_ items: [T]) -> T { items[int(in: 0..<items.count)] }
}
