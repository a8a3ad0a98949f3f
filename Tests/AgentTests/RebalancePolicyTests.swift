import Health
import NetworkAddress
import Testing

@testable import Agent

/// Paced rebalancing as a pure state machine: censuses in, single closes out. Proven both ways: it
/// moves an excess back to a returned backend, paced; it never acts within the tolerance, on a
/// flapping backend, on a connection carrying data, beyond a backend's excess or beyond the rate.
@Suite struct RebalancePolicyTests {
    typealias Action = ReapPolicy.Action
    let t0 = ContinuousClock.now
    let backends = ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"].map { try! EndpointParsing.parse($0) }
    static let ok = ProbeResult.succeeded(after: .milliseconds(1), "connected")
    static let refused = ProbeResult(failure: .refused, duration: .milliseconds(1), detail: "refused")
    static let holdDown = RebalanceSettings().holdDown

    func at(_ seconds: Double) -> ContinuousClock.Instant { t0 + .seconds(seconds) }
    func key(_ index: Int) -> BackendKey { BackendKey(pool: "api", backend: backends[index]) }

    func configuration(rebalance: Bool = true, tolerance: Double = 20, budget: Int = 500) -> AgentConfiguration {
        var pool = PoolConfiguration(name: "api", backends: backends)
        pool.rise = 1
        pool.fall = 1
        pool.rebalance = rebalance
        pool.rebalanceTolerance = tolerance
        var configuration = AgentConfiguration()
        configuration.pools = [pool]
        configuration.maxSocketsPerSecond = budget
        configuration.maxSocketsBurst = budget
        return configuration
    }

    /// Every backend probed up at t0.
    func upPolicy(_ configuration: AgentConfiguration, seed: UInt64 = 7) -> ReapPolicy {
        var policy = ReapPolicy(configuration, at: t0, seed: seed)
        for index in backends.indices { _ = policy.handle(.probed(key(index), Self.ok, at: t0)) }
        return policy
    }

    /// `counts[i]` connections on backend i; the first `busy[i]` of them carry data.
    func census(_ counts: [Int], busy: [Int] = [0, 0, 0]) -> [ConnectionSample] {
        var connections: [ConnectionSample] = []
        for (index, count) in counts.enumerated() {
            for number in 0..<count {
                let carries = number < busy[index]
                connections.append(
                    ConnectionSample(
                        backend: backends[index], local: Endpoint(address: .v4(0x0A00_0064), port: UInt16(30000 + index * 1000 + number)),
                        cookie: UInt64(index * 1000 + number), unacked: carries ? 3 : 0,
                        sinceDataSent: carries ? .milliseconds(10) : .seconds(60), sinceDataReceived: .milliseconds(Int64(number * 10))))
            }
        }
        return connections
    }

    /// Backend `index` refuses and its connections are silent: dead.
    func down(_ policy: inout ReapPolicy, _ index: Int, at now: Double) -> [Action] {
        policy.handle(.probed(key(index), Self.refused, at: at(now)))
            + policy.handle(.evidence(key(index), SegmentEvidence(at: at(now), sockets: 0, youngestSegmentAge: nil)))
    }

    func censusAsked(_ actions: [Action]) -> Bool { actions.contains(.census(pool: "api")) }

    func closes(_ actions: [Action]) -> [(BackendKey, ConnectionSample)] {
        actions.compactMap { if case .rebalance(let key, let connection) = $0 { (key, connection) } else { nil } }
    }

    func news(_ actions: [Action]) -> [ReapPolicy.RebalanceNews] {
        actions.compactMap { if case .rebalanceNews(_, let news) = $0 { news } else { nil } }
    }

    /// Drives the policy through `seconds` of ticks every 50 ms from `start`, answering each census
    /// with `counts` and each close with its result; `moves` says where a closed connection reconnects
    /// (nil: back to where it was). Returns the closes with their times.
    func run(
        _ policy: inout ReapPolicy, from start: Double, for seconds: Double, counts: inout [Int], busy: [Int] = [0, 0, 0],
        movesTo target: Int? = 2, between: (Double, inout ReapPolicy) -> Void = { _, _ in }
    ) -> [(time: Double, from: Int)] {
        var done: [(time: Double, from: Int)] = []
        var now = start
        while now < start + seconds {
            between(now, &policy)
            var pending = policy.handle(.tick(at(now)))
            while !pending.isEmpty {
                let action = pending.removeFirst()
                if case .census = action {
                    pending += policy.handle(.censused(pool: "api", census(counts, busy: busy), at: at(now)))
                } else if case .rebalance(let key, let connection) = action {
                    #expect(!connection.carriesData)
                    let from = backends.firstIndex(of: key.backend)!
                    counts[from] -= 1
                    counts[target ?? from] += 1
                    done.append((now, from))
                    pending += policy.handle(
                        .reaped(.init(pool: "api", backend: key.backend, reason: .rebalance, ended: 1, leftByLimit: 0, at: at(now))))
                }
            }
            now += 0.05
        }
        return done
    }

    @Test func nothingBeforeTheHoldDownThenACensus() {
        var policy = upPolicy(configuration())
        #expect(!censusAsked(policy.handle(.tick(at(5)))))
        #expect(policy.nextDeadline == t0 + Self.holdDown)
        #expect(censusAsked(policy.handle(.tick(t0 + Self.holdDown))))
    }

    @Test func movesTheExcessToTheReturnedBackendPacedUntilWithinTolerance() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        let done = run(&policy, from: 10, for: 60, counts: &counts)
        // Fair 30, 20% tolerance: it stops as soon as the returned one holds 24.
        #expect(counts == [33, 33, 24] || counts == [34, 32, 24] || counts == [32, 34, 24])
        #expect(done.count == 24)
        // 1% of 90 connections a second, with 25% jitter: never two closes within 0.8 s, never 3 in a second.
        for (earlier, later) in zip(done, done.dropFirst()) { #expect(later.time - earlier.time >= 0.8) }
        for close in done { #expect(done.filter { $0.time >= close.time && $0.time < close.time + 1 }.count <= 2) }
        #expect(done.contains { $0.from == 0 } && done.contains { $0.from == 1 })  // ties broken at random
        // Then it only looks, every 10 s.
        let after = run(&policy, from: 70, for: 30, counts: &counts)
        #expect(after.isEmpty)
    }

    @Test func thePicksAndPacingReplayWithTheSameSeed() {
        var first = upPolicy(configuration(), seed: 42)
        var second = upPolicy(configuration(), seed: 42)
        var a = [45, 45, 0], b = [45, 45, 0]
        let one = run(&first, from: 10, for: 20, counts: &a), two = run(&second, from: 10, for: 20, counts: &b)
        #expect(one.map(\.time) == two.map(\.time) && one.map(\.from) == two.map(\.from))
    }

    @Test func prefersTheQuietestConnections() {
        var policy = upPolicy(configuration())
        _ = policy.handle(.tick(at(10)))
        let connections = census([45, 45, 0])
        let chosen = closes(policy.handle(.censused(pool: "api", connections, at: at(10))))
        #expect(chosen.count == 1)
        let onItsBackend = connections.filter { $0.backend == chosen[0].0.backend }.map(\.quietFor).sorted(by: >)
        // One of the quietest quarter (11 of 45).
        #expect(chosen[0].1.quietFor >= onItsBackend[10])
    }

    @Test func nothingWhileTheSpreadIsWithinTolerance() {
        var policy = upPolicy(configuration())
        var counts = [35, 30, 25]
        let done = run(&policy, from: 10, for: 40, counts: &counts)
        #expect(done.isEmpty && counts == [35, 30, 25])
        // A tighter tolerance acts on the same spread.
        var strict = upPolicy(configuration(tolerance: 10))
        #expect(!run(&strict, from: 10, for: 5, counts: &counts).isEmpty)
    }

    @Test func aFewConnectionsCannotBeSpreadCloserThanOne() {
        var policy = upPolicy(configuration())
        var counts = [1, 1, 0]
        #expect(run(&policy, from: 10, for: 30, counts: &counts).isEmpty)
    }

    @Test func withoutTheOptionNoCensusAndNoClose() {
        var policy = upPolicy(configuration(rebalance: false))
        #expect(policy.nextDeadline == nil)
        var counts = [45, 45, 0]
        #expect(run(&policy, from: 0, for: 40, counts: &counts).isEmpty)
    }

    @Test func aFlappingBackendPullsNothing() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        // Backend 3 is down and up every 2 s for a minute: never up for the hold-down.
        let done = run(&policy, from: 0, for: 60, counts: &counts) { now, policy in
            let phase = Int(now * 20) % 80  // 4 s period in 50 ms steps
            if phase == 0 { _ = down(&policy, 2, at: now) }
            if phase == 40 { _ = policy.handle(.probed(key(2), Self.ok, at: at(now))) }
        }
        #expect(done.isEmpty && counts == [45, 45, 0])
    }

    @Test func neverEndsAConnectionCarryingData() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        // Every connection on the over-share backends is mid-request: nothing to take.
        #expect(run(&policy, from: 10, for: 20, counts: &counts, busy: [45, 45, 0]).isEmpty)
        // A request sent within the grace counts too, even with nothing unacknowledged.
        let justAsked = ConnectionSample(
            backend: backends[0], local: Endpoint(address: .v4(1), port: 1), cookie: 1, sinceDataSent: .seconds(1),
            sinceDataReceived: .seconds(30))
        #expect(justAsked.carriesData)
        var random = PolicyRandom(seed: 1)
        #expect(RebalancePlan.choose(on: backends[0], from: [justAsked], random: &random) == nil)
        // With some quiet ones among them, only quiet ones go (run() checks each close).
        let done = run(&policy, from: 30, for: 40, counts: &counts, busy: [40, 40, 0])
        #expect(done.count == 10)  // the 5 quiet ones of each: then it waits
    }

    @Test func neverTakesMoreThanABackendsExcess() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        // A balancer that puts every reconnect back where it was (a hash): each backend gives up its
        // excess of 15 at most, then the episode gives up.
        var told: [ReapPolicy.RebalanceNews] = []
        let done = run(&policy, from: 10, for: 120, counts: &counts, movesTo: nil) { now, policy in
            // Watch the news: the run helper drops it.
            if abs(now - 129.9) < 0.01 {
                told += news(policy.handle(.censused(pool: "api", census([45, 45, 0]), at: at(now))))
            }
        }
        #expect(done.filter { $0.from == 0 }.count == 15 && done.filter { $0.from == 1 }.count == 15)
        // The next censuses do not start over: only a backend coming up again arms it.
        #expect(run(&policy, from: 130, for: 30, counts: &counts, movesTo: nil).isEmpty)
        #expect(told.isEmpty)
    }

    @Test func theEpisodeStopsWhenABackendLeavesUp() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        var interrupted: [ReapPolicy.RebalanceNews] = []
        let done = run(&policy, from: 10, for: 30, counts: &counts) { now, policy in
            if abs(now - 15) < 0.01 { interrupted += news(down(&policy, 2, at: now)) }
        }
        #expect(interrupted.count == 1)
        #expect(done.allSatisfy { $0.time < 15 } && !done.isEmpty)
    }

    @Test func theBudgetBoundsTheRate() {
        // A node budget of 1 socket a second, spent elsewhere: the close waits and is counted as held back.
        var policy = upPolicy(configuration(budget: 1))
        policy.budget.spend(1)
        _ = policy.handle(.tick(at(10)))
        let actions = policy.handle(.censused(pool: "api", census([45, 45, 0]), at: at(10)))
        #expect(closes(actions).isEmpty)
        #expect(actions.contains { if case .suppressed(_, _, .budget, _) = $0 { true } else { false } })
    }

    @Test func theRateIsOnePercentWithinAFloorAndACeiling() {
        let settings = RebalanceSettings()
        #expect(RebalancePlan.closesPerSecond(connections: 90, settings: settings) == 0.9)
        #expect(RebalancePlan.closesPerSecond(connections: 5, settings: settings) == 0.2)
        #expect(RebalancePlan.closesPerSecond(connections: 100_000, settings: settings) == 5)
    }
}
