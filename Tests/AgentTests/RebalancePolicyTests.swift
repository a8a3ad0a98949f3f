import OS
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

    func configuration(rebalance: Bool = true, tolerance: Double = 20, budget: Int = 500, rate: Double? = nil) -> AgentConfiguration {
        var pool = PoolConfiguration(name: "api", backends: backends)
        pool.rise = 1
        pool.fall = 1
        pool.rebalance = rebalance
        pool.rebalanceTolerance = tolerance
        pool.rebalanceRate = rate
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
    /// with `counts` and each close with its result; `reconnect` says where a connection closed on a
    /// backend comes back (nil: nowhere). Every close must take from a backend above its fair share.
    /// Returns the closes with their times; the episodes' news goes to `told`.
    func run(
        _ policy: inout ReapPolicy, from start: Double, for seconds: Double, counts: inout [Int], busy: [Int] = [0, 0, 0],
        reconnect: (Int) -> Int? = { _ in 2 }, told: (ReapPolicy.RebalanceNews) -> Void = { _ in },
        between: (Double, inout ReapPolicy) -> Void = { _, _ in }
    ) -> [(time: Double, from: Int)] {
        var done: [(time: Double, from: Int)] = []
        var now = start
        while now < start + seconds {
            between(now, &policy)
            var pending = policy.handle(.tick(at(now)))
            while !pending.isEmpty {
                let action = pending.removeFirst()
                if case .rebalanceNews(_, let news) = action { told(news) }
                if case .census = action {
                    pending += policy.handle(.censused(pool: "api", census(counts, busy: busy), at: at(now)))
                } else if case .rebalance(let key, let connection) = action {
                    #expect(!connection.carriesData)
                    let from = backends.firstIndex(of: key.backend)!
                    #expect(Double(counts[from]) > Double(counts.reduce(0, +)) / 3, "at or below its fair share")
                    counts[from] -= 1
                    if let target = reconnect(from) { counts[target] += 1 }
                    done.append((now, from))
                    pending += policy.handle(
                        .reaped(
                            .init(pool: "api", backend: key.backend, reason: .rebalance, ended: 1, leftByLimit: 0, at: at(now), granted: 1))
                    )
                }
            }
            now += 0.05
        }
        return done
    }

    @Test func nothingBeforeTheHoldDownThenACensus() {
        var policy = upPolicy(configuration())
        #expect(!censusAsked(policy.handle(.tick(at(9)))))
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
        // 1.5 a second (1% of 90 is below the floor), with 25% jitter: never two closes within 0.5 s,
        // never 3 in a second.
        for (earlier, later) in zip(done, done.dropFirst()) { #expect(later.time - earlier.time >= 0.5 - 1e-9) }
        for close in done { #expect(done.filter { $0.time >= close.time && $0.time < close.time + 1 }.count <= 2) }
        #expect(done.contains { $0.from == 0 } && done.contains { $0.from == 1 })  // ties broken at random
        // Then it only looks, every 10 s.
        let after = run(&policy, from: 70, for: 30, counts: &counts)
        #expect(after.isEmpty)
    }

    /// The balancer (uid 101) holds 45 and 45 on backends 0 and 1; a local client (uid 0) talks to
    /// backend 0 directly over 30 connections idle for minutes, the quietest of all.
    func withALocalClient() -> [ConnectionSample] {
        var connections = census([45, 45, 0])
        for index in connections.indices { connections[index].owner = ConnectionOwner(uid: 101, cgroup: 7) }
        for number in 0..<30 {
            connections.append(
                ConnectionSample(
                    backend: backends[0], local: Endpoint(address: .v4(0x0A00_0065), port: UInt16(40000 + number)),
                    cookie: UInt64(90_000 + number),
                    sinceDataSent: .seconds(600), sinceDataReceived: .seconds(600), owner: ConnectionOwner(uid: 0, cgroup: 3)))
        }
        return connections
    }

    func closesOf(_ owner: RebalanceOwner) -> [ConnectionSample] {
        var pool = configuration()
        pool.pools[0].rebalanceOwner = owner
        var policy = upPolicy(pool)
        _ = policy.handle(.tick(at(10)))
        let connections = withALocalClient()
        var chosen: [ConnectionSample] = []
        _ = policy.handle(.censused(pool: "api", connections, at: at(10)))  // the episode starts
        for round in 0..<10 {
            let now = at(12 + 2 * Double(round))
            for (key, connection) in closes(policy.handle(.censused(pool: "api", connections, at: now))) {
                chosen.append(connection)
                _ = policy.handle(
                    .reaped(.init(pool: "api", backend: key.backend, reason: .rebalance, ended: 1, leftByLimit: 0, at: now, granted: 1)))
            }
        }
        return chosen
    }

    /// A rebalance ends only the balancer's connections: by default the owner whose connections reach
    /// the most backends, though the local client holds more on backend 0 and quieter ones. The plan
    /// counts the balancer's alone (45-45-0, not 75-45-0). The other way: `rebalance_owner: any`
    /// takes the local client's first, the quietest.
    @Test func aRebalanceEndsOnlyTheBalancersConnections() {
        let scope = RebalanceScope(.auto, connections: withALocalClient())
        #expect(scope == .owner(ConnectionOwner(uid: 101, cgroup: 7)))
        let chosen = closesOf(.auto)
        #expect(chosen.count == 10)
        #expect(chosen.allSatisfy { $0.owner.uid == 101 }, "\(chosen.map(\.owner))")
        #expect(closesOf(.uid(101)).allSatisfy { $0.owner.uid == 101 })
        let any = closesOf(.any)
        #expect(any.count == 10 && any.allSatisfy { $0.owner.uid == 0 }, "\(any.map(\.owner))")
    }

    /// `auto` between two owners that reach as many backends: the one with more connections, then
    /// the lower uid; no connections at all: every connection (there is nothing to pick from).
    @Test func autoPicksByReachThenCountThenTheLowerUid() {
        func sample(_ backend: Int, uid: UInt32, port: UInt16) -> ConnectionSample {
            ConnectionSample(
                backend: backends[backend], local: Endpoint(address: .v4(1), port: port), cookie: UInt64(port),
                sinceDataSent: .seconds(1), sinceDataReceived: .seconds(1), owner: ConnectionOwner(uid: uid))
        }
        let more = [
            sample(0, uid: 5, port: 1), sample(1, uid: 5, port: 2), sample(0, uid: 6, port: 3), sample(1, uid: 6, port: 4),
            sample(1, uid: 6, port: 5),
        ]
        #expect(RebalanceScope(.auto, connections: more) == .owner(ConnectionOwner(uid: 6)))
        let tie = [sample(0, uid: 9, port: 1), sample(0, uid: 8, port: 2)]
        #expect(RebalanceScope(.auto, connections: tie) == .owner(ConnectionOwner(uid: 8)))
        #expect(RebalanceScope(.auto, connections: []) == .every)
    }

    @Test func rebalanceOwnerParsesAutoAnyAndAUidAndNamesAnythingElse() throws {
        #expect(try RebalanceOwner(parsing: "auto") == .auto)
        #expect(try RebalanceOwner(parsing: "any") == .any)
        #expect(try RebalanceOwner(parsing: "uid:101") == .uid(101))
        for bad in ["", "nginx", "uid:", "uid:-1", "uid:4294967295", "uid:x", "UID:1"] {
            #expect(throws: ConfigValue.Failure("'\(bad)' is not auto, any or uid:N (a user id)")) { try RebalanceOwner(parsing: bad) }
        }
    }

    @Test func thePicksAndPacingReplayWithTheSameSeed() {
        var first = upPolicy(configuration(), seed: 42)
        var second = upPolicy(configuration(), seed: 42)
        var a = [45, 45, 0], b = [45, 45, 0]
        let one = run(&first, from: 10, for: 20, counts: &a), two = run(&second, from: 10, for: 20, counts: &b)
        #expect(one.map(\.time) == two.map(\.time) && one.map(\.from) == two.map(\.from))
    }

    @Test func prefersIdleConnectionsThenTheOnesThatSentNothingLongest() {
        var policy = upPolicy(configuration())
        _ = policy.handle(.tick(at(10)))
        // census(): every connection receives (the last within 0-440 ms), none sent for a minute, and
        // the first 10 on backend 1 have been idle both ways for 5 to 14 s.
        var connections = census([45, 45, 0])
        for index in 0..<10 {
            connections[index].sinceDataReceived = .seconds(5 + index)
        }
        #expect(closes(policy.handle(.censused(pool: "api", connections, at: at(10)))).isEmpty)  // the episode starts
        for round in 0..<6 {
            let chosen = closes(policy.handle(.censused(pool: "api", connections, at: at(12 + 2 * Double(round)))))
            #expect(chosen.count == 1)
            if chosen.first?.0.backend == backends[0] {
                // One of the idle quarter of its 45 (the 11 idlest: the 10 idle ones and the next).
                #expect(chosen[0].1.quietFor >= .seconds(5) || chosen[0].1.preference.0 == 0)
            }
            _ = policy.handle(
                .reaped(
                    .init(
                        pool: "api", backend: chosen[0].0.backend, reason: .rebalance, ended: 1, leftByLimit: 0,
                        at: at(12 + 2 * Double(round)), granted: 1)))
        }
        // Streams that keep receiving: the one that sent nothing for longest goes first.
        let young = ConnectionSample(
            backend: backends[0], local: Endpoint(address: .v4(1), port: 1), cookie: 1, sinceDataSent: .seconds(3),
            sinceDataReceived: .milliseconds(20))
        let old = ConnectionSample(
            backend: backends[0], local: Endpoint(address: .v4(1), port: 2), cookie: 2, sinceDataSent: .seconds(3600),
            sinceDataReceived: .milliseconds(40))
        var random = SeededRandom(seed: 3)
        #expect(RebalancePlan.choose(on: backends[0], from: [young, old, young, young], random: &random) == old)
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
        // But a node with 2-1-0 (kubelet and two more through the node proxy) moves its one.
        for (before, after) in [([2, 1, 0], [1, 1, 1]), ([2, 2, 0], [1, 2, 1]), ([4, 4, 1], [3, 3, 3])] {
            var small = upPolicy(configuration())
            var counts = before
            _ = run(&small, from: 10, for: 60, counts: &counts)
            #expect(counts.sorted() == after.sorted(), "\(before)")
        }
    }

    @Test func turnedOnByAReloadItLooksOnceAHoldDownLater() {
        var policy = upPolicy(configuration(rebalance: false))
        policy.apply(configuration(), at: at(100))
        #expect(policy.nextDeadline == at(100) + Self.holdDown)
        var counts = [45, 45, 0]
        #expect(run(&policy, from: 100, for: 5, counts: &counts).isEmpty)
        #expect(!run(&policy, from: 110, for: 5, counts: &counts).isEmpty)
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
        let done = run(
            &policy, from: 0, for: 60, counts: &counts,
            between: { now, policy in
                let phase = Int(now * 20) % 80  // 4 s period in 50 ms steps
                if phase == 0 { _ = down(&policy, 2, at: now) }
                if phase == 40 { _ = policy.handle(.probed(key(2), Self.ok, at: at(now))) }
            })
        #expect(done.isEmpty && counts == [45, 45, 0])
    }

    @Test func eachReturnWithinTenMinutesDoublesTheHoldDown() {
        var policy = upPolicy(configuration())
        for (failedAt, backAt) in [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)] {
            _ = down(&policy, 2, at: failedAt)
            _ = policy.handle(.probed(key(2), Self.ok, at: at(backAt)))
        }
        // The third return: 10 s x 4 = 40 s after it came up at 6 s.
        var counts = [45, 45, 0]
        let done = run(&policy, from: 6, for: 60, counts: &counts)
        #expect(!done.isEmpty && done[0].time >= 46 && done[0].time < 48)
        let settings = RebalanceSettings()
        #expect(settings.holdDown(afterReturns: 0) == .seconds(10) && settings.holdDown(afterReturns: 1) == .seconds(10))
        #expect(settings.holdDown(afterReturns: 2) == .seconds(20) && settings.holdDown(afterReturns: 30) == .seconds(300))
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
        var random = SeededRandom(seed: 1)
        #expect(RebalancePlan.choose(on: backends[0], from: [justAsked], random: &random) == nil)
        // With some quiet ones among them, only quiet ones go (run() checks each close).
        let done = run(&policy, from: 30, for: 40, counts: &counts, busy: [40, 40, 0])
        #expect(done.count == 10)  // the 5 quiet ones of each: then it waits
    }

    @Test func givesUpWhenTheBalancerPutsReconnectsBack() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        // A balancer that puts every reconnect back where it was (a hash): after twice as many closes
        // that moved nothing as the excess of 30, the episode gives up.
        var told: [ReapPolicy.RebalanceNews] = []
        let done = run(&policy, from: 10, for: 120, counts: &counts, reconnect: { $0 }, told: { told.append($0) })
        #expect(done.count == 61)
        #expect(told.count == 2 && told.last == .gaveUp(counts: [backends[0]: 45, backends[1]: 45, backends[2]: 0], closed: 61, moved: 0))
        // The next censuses do not start over: only a backend coming up again arms it.
        #expect(run(&policy, from: 130, for: 30, counts: &counts, reconnect: { $0 }).isEmpty)
    }

    @Test func toleratesSomeReconnectsLandingElsewhere() {
        // nginx's workers keep their own least_conn counts: every third reconnect lands on the donor.
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        var number = 0
        var told: [ReapPolicy.RebalanceNews] = []
        let done = run(
            &policy, from: 10, for: 80, counts: &counts,
            reconnect: { from in
                number += 1
                return number % 3 == 0 ? from : 2
            }, told: { told.append($0) })
        #expect(counts[2] >= 24 && told.last == .balanced(counts: Dictionary(uniqueKeysWithValues: zip(backends, counts))))
        #expect(done.count == 35)  // 24 moved, 11 landed back: within the 60 misses twice the excess allows
    }

    @Test func neverTakesABackendBelowItsFairShare() {
        // Clients that do not come back at all: every close is a loss, the donors shrink with the
        // pool's fair share; run() checks each close was above it, and the episode gives up.
        var policy = upPolicy(configuration())
        var counts = [45, 38, 0]
        var told: [ReapPolicy.RebalanceNews] = []
        let done = run(&policy, from: 10, for: 120, counts: &counts, reconnect: { _ in nil }, told: { told.append($0) })
        // Each close was above the backend's fair share at that moment (run() checks); the misses end
        // the episode after twice the excess it found (27).
        #expect(!done.isEmpty && done.count <= 2 * 27 + 1, "\(done.count)")
        if case .gaveUp? = told.last {} else { Issue.record("expected the episode to give up: \(told)") }
    }

    @Test func theEpisodeStopsWhenABackendLeavesUp() {
        var policy = upPolicy(configuration())
        var counts = [45, 45, 0]
        var interrupted: [ReapPolicy.RebalanceNews] = []
        let done = run(
            &policy, from: 10, for: 30, counts: &counts,
            between: { now, policy in
                if abs(now - 15) < 0.01 { interrupted += news(down(&policy, 2, at: now)) }
            })
        #expect(interrupted.count == 1)
        #expect(done.allSatisfy { $0.time < 15 } && !done.isEmpty)
    }

    @Test func theBudgetBoundsTheRate() {
        // A node budget of 1 socket a second, spent elsewhere: the close waits and is counted as held back.
        var policy = upPolicy(configuration(budget: 1))
        _ = policy.handle(.tick(at(10)))
        _ = policy.handle(.censused(pool: "api", census([45, 45, 0]), at: at(10)))
        policy.budget.reserve(3)
        let actions = policy.handle(.censused(pool: "api", census([45, 45, 0]), at: at(12)))
        #expect(closes(actions).isEmpty)
        #expect(actions.contains { if case .suppressed(_, _, .budget, _) = $0 { true } else { false } })
    }

    @Test func theRateIsOnePercentWithinAFloorAndACeilingUnlessSet() {
        let settings = RebalanceSettings()
        #expect(RebalancePlan.closesPerSecond(connections: 90, settings: settings) == 1.5)
        #expect(RebalancePlan.closesPerSecond(connections: 5, settings: settings) == 1.5)
        #expect(RebalancePlan.closesPerSecond(connections: 300, settings: settings) == 3)
        #expect(RebalancePlan.closesPerSecond(connections: 100_000, settings: settings) == 5)
        #expect(RebalancePlan.closesPerSecond(connections: 100_000, settings: RebalanceSettings(fixedPerSecond: 0.05)) == 0.05)
    }

    @Test func aSetRateIsKeptWhateverThePoolsSize() {
        var policy = upPolicy(configuration(rate: 0.1))
        var counts = [45, 45, 0]
        let done = run(&policy, from: 10, for: 60, counts: &counts)
        // One per 10 s on average: 4 to 8 in a minute, never two within 7.5 s.
        #expect((4...8).contains(done.count))
        for (earlier, later) in zip(done, done.dropFirst()) { #expect(later.time - earlier.time >= 7.5) }
    }

    @Test func nodesThatSawTheSameReturnDoNotCloseInStep() {
        // Many nodes, the same return, the same hold-down: their first closes spread over the first interval.
        var firsts: [Double] = []
        for seed in UInt64(1)...20 {
            var policy = upPolicy(configuration(), seed: seed)
            var counts = [45, 45, 0]
            if let first = run(&policy, from: 10, for: 3, counts: &counts).first { firsts.append(first.time) }
        }
        #expect(firsts.count >= 15)
        #expect(firsts.allSatisfy { $0 >= 10 && $0 <= 10 + 1 / 0.9 + 0.1 })
        #expect(Set(firsts.map { ($0 * 10).rounded() }).count >= 6)
    }
}
