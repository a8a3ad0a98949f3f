import Health
import NetworkAddress
import Testing

@testable import Agent

/// The rules every path that ends connections answers to (README "Backend states"), each shown
/// both ways: the living kept, the dead still reaped.
@Suite struct NoHarmRulesTests {
    typealias Action = ReapPolicy.Action
    let t0 = ContinuousClock.now
    let backends = ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"].map { try! EndpointParsing.parse($0) }

    func key(_ index: Int, pool: String = "api") -> BackendKey { BackendKey(pool: pool, backend: backends[index]) }
    func at(_ milliseconds: Int) -> ContinuousClock.Instant { t0 + .milliseconds(milliseconds) }

    func configuration(_ adjust: (inout PoolConfiguration) -> Void = { _ in }) -> AgentConfiguration {
        var pool = PoolConfiguration(name: "api", backends: backends)
        pool.interval = .milliseconds(200)
        pool.probe.timeout = .milliseconds(150)
        adjust(&pool)
        var configuration = AgentConfiguration()
        configuration.pools = [pool]
        return configuration
    }

    static let ok = ProbeResult.succeeded(after: .milliseconds(1), "connected")
    static func failed(_ failure: ProbeFailure, after milliseconds: Int = 150) -> ProbeResult {
        ProbeResult(failure: failure, duration: .milliseconds(milliseconds), detail: failure.rawValue)
    }

    func upPolicy(_ configuration: AgentConfiguration) -> ReapPolicy {
        var policy = ReapPolicy(configuration, at: t0)
        for round in 0..<2 {
            for pool in configuration.pools {
                for backend in pool.backends {
                    _ = policy.handle(.probed(BackendKey(pool: pool.name, backend: backend), Self.ok, at: at(round * 50)))
                }
            }
        }
        return policy
    }

    func ends(_ actions: [Action]) -> [ReapReason] {
        actions.compactMap { action in
            switch action {
            case .reap(_, let reason, _, _, _): reason
            case .endFlow(_, _, let reason, _): reason
            case .scanStuck: .stuck
            case .countConnections: .drainTimeout
            default: nil
            }
        }
    }

    func suppressions(_ actions: [Action]) -> [SuppressReason] {
        actions.compactMap { if case .suppressed(_, _, let reason, _) = $0 { reason } else { nil } }
    }

    /// Unhealthy (reached, failing) from `ms` on, for `fall` probes.
    func unhealthy(_ policy: inout ReapPolicy, _ key: BackendKey, at ms: Int) {
        _ = policy.handle(.probed(key, Self.failed(.unhealthy, after: 2), at: at(ms)))
        _ = policy.handle(.probed(key, Self.failed(.unhealthy, after: 2), at: at(ms + 200)))
    }

    // MARK: - The guard covers every path

    /// Incident 2, made by the agent itself: two of three lose power, the third turns slow under
    /// the load while it serves everything. drain_timeout never closes the sole survivor's streams.
    @Test func theSoleSurvivorIsNeverDrainedWhateverItsProbesSay() {
        var policy = upPolicy(configuration { $0.drainTimeout = .seconds(2) })
        for dead in [0, 1] {
            _ = policy.handle(.probed(key(dead), Self.failed(.unreachable), at: at(300)))
            _ = policy.handle(.probed(key(dead), Self.failed(.unreachable), at: at(500)))
        }
        unhealthy(&policy, key(2), at: 600)
        var closes: [Action] = []
        var held: [SuppressReason] = []
        for ms in stride(from: 600, through: 20_000, by: 50) {
            // The dead keep failing; the survivor stays slow.
            if ms % 200 == 0 {
                for dead in [0, 1] { _ = policy.handle(.probed(key(dead), Self.failed(.unreachable), at: at(ms))) }
                let actions = policy.handle(.probed(key(2), Self.failed(.unhealthy, after: 2), at: at(ms)))
                closes += actions.filter { !ends([$0]).isEmpty && ends([$0]) != [.dead] }
            }
            let actions = policy.handle(.tick(at(ms)))
            closes += actions.filter { ends([$0]) == [.drainTimeout] }
            held += suppressions(actions)
        }
        #expect(closes.isEmpty, "\(closes)")
        #expect(held.contains(.allBackendsDown))
        #expect(policy.backends[key(2)]?.state == .unhealthy)
    }

    /// The other way: a wedged backend beside one that answers is drained after drain_timeout.
    @Test func aWedgedBackendBesideASurvivorIsDrained() {
        var policy = upPolicy(configuration { $0.drainTimeout = .seconds(2) })
        unhealthy(&policy, key(2), at: 300)
        for other in [0, 1] { _ = policy.handle(.probed(key(other), Self.ok, at: at(2_400))) }
        #expect(policy.handle(.tick(at(2_500))) == [.countConnections(key(2))])
    }

    /// A survivor is one whose latest probe succeeded: a prober-side fault that reaches the
    /// backends a few hundred ms apart leaves the first one's verdict without a survivor.
    @Test func aSurvivorIsOneThatAnswersNow() {
        for othersStillAnswer in [false, true] {
            var policy = upPolicy(configuration())
            _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))
            // The others answered after it began failing...
            for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(310))) }
            // ...and then the fault reached them too (or not).
            for other in [0, 2] {
                _ = policy.handle(.probed(key(other), othersStillAnswer ? Self.ok : Self.failed(.unreachable), at: at(480)))
            }
            _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))
            let actions = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 3, youngestSegmentAge: .seconds(5))))
            let later = (51...80).flatMap { policy.handle(.tick(at($0 * 10))) }
            #expect(ends(actions + later).contains(.dead) == othersStillAnswer, "others answer: \(othersStillAnswer)")
        }
    }

    /// The kernel repro of a fault near the prober reaching X, then Z 600 ms later: at X's verdict
    /// Z's latest probe succeeded, but was sent before X's last failed one, and Z's next is in
    /// flight. X's first pass asks the peers now: when their answers fail too, nothing is ended.
    @Test func aSurvivorAnsweredAProbeSentAfterTheDeadOnesLastFailure() {
        for peersLive in [false, true] {
            var policy = upPolicy(configuration())
            _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))  // sent at 150
            for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(340))) }  // sent at 339
            _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))  // sent at 350
            let found = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 3, youngestSegmentAge: .seconds(5))))
            #expect(ends(found).isEmpty && found.contains(.probeNow(pool: "api", backends: [backends[0], backends[2]])))
            var later: [Action] = []
            for other in [0, 2] {
                // Live peers answer in a millisecond; faulted ones time out.
                later += policy.handle(.probed(key(other), peersLive ? Self.ok : Self.failed(.unreachable), at: at(peersLive ? 507 : 655)))
            }
            later += (66...300).flatMap { policy.handle(.tick(at($0 * 10))) }
            #expect(ends(found + later).contains(.dead) == peersLive, "peers live: \(peersLive)")
            #expect(suppressions(later).contains(.allBackendsDown) == !peersLive, "peers live: \(peersLive)")
        }
    }

    @Test func stuckScansWaitForABackendThatAnswersNow() {
        var policy = upPolicy(configuration { $0.stuckAfter = .seconds(2) })
        for backend in 0..<3 { _ = policy.handle(.probed(key(backend), Self.failed(.unreachable), at: at(400))) }
        let held = policy.handle(.tick(at(500)))
        #expect(ends(held).isEmpty && suppressions(held) == [.allBackendsDown])
        _ = policy.handle(.probed(key(0), Self.ok, at: at(600)))
        #expect(ends(policy.handle(.tick(at(1_000)))) == [.stuck])
    }

    // MARK: - Recovery wins

    @Test func aProbeThatReachesADeadBackendMakesItUnhealthyAndEndsTheReaping() {
        var policy = upPolicy(configuration())
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(460))) }
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))
        _ = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 0, youngestSegmentAge: nil)))
        #expect(policy.backends[key(1)]?.state == .dead)
        // TLS came up, an HTTP status came back: something is there.
        let reached = policy.handle(.probed(key(1), Self.failed(.unhealthy, after: 3), at: at(700)))
        #expect(reached.contains(.changed(key(1), from: .dead, to: .unhealthy, failure: .unhealthy, detail: "unhealthy")))
        #expect(reached.contains(.unwatchNewFlows(key(1))))
        #expect((71...300).flatMap { ends(policy.handle(.tick(at($0 * 10)))) }.isEmpty)
    }

    /// Found dead at 505 while its peers answered, then every peer fails its probes (a fault on the
    /// prober's side) and the guard holds the first pass.
    func deadAndHeld(_ policy: inout ReapPolicy) {
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(310))) }
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.failed(.unreachable, after: 2), at: at(450))) }
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))
        let found = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 4, youngestSegmentAge: .seconds(1))))
        #expect(policy.backends[key(1)]?.state == .dead && ends(found).isEmpty)
        #expect((51...300).flatMap { ends(policy.handle(.tick(at($0 * 10)))) }.isEmpty)
    }

    /// Found dead at 505 while its peers answered; its first pass came back; the periodic full pass
    /// some 10 s on asks for a look first. Returns when it asked.
    func deadUntilThePeriodicLook(_ policy: inout ReapPolicy) -> Int {
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(460))) }
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))
        let found = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 4, youngestSegmentAge: .seconds(1))))
        #expect(ends(found) == [.dead])
        policy.passesReturn(found, at: at(505))
        for ms in stride(from: 510, through: 12_000, by: 10) {
            let actions = policy.handle(.tick(at(ms)))
            policy.passesReturn(actions, at: at(ms))
            #expect(!ends(actions).contains(.dead))
            if actions.contains(.needEvidence(key(1), since: at(505))) { return ms }
        }
        return -1
    }

    /// Seeds 3011019, 4003532 and 4095245 of the simulation: a pass decided long after the look
    /// that found the connections silent ran after the backend's streams flowed again.
    @Test func aPassDecidedLongAfterTheLookThatFoundItSilentLooksAgainAndSparesStreamsThatFlow() {
        var policy = upPolicy(configuration())
        let asked = deadUntilThePeriodicLook(&policy)
        #expect((10_400...10_700).contains(asked), "\(asked)")
        // Its streams carried a segment 100 ms ago: it lives. Nothing is ended, now or later.
        let looked = policy.handle(
            .evidence(key(1), SegmentEvidence(at: at(asked + 5), sockets: 4, youngestSegmentAge: .milliseconds(100))))
        #expect(ends(looked).isEmpty && suppressions(looked).contains(.aliveEvidence), "\(looked)")
        #expect(policy.backends[key(1)]?.state == .unhealthy)
        #expect((asked / 10 + 1...asked / 10 + 1_000).flatMap { ends(policy.handle(.tick(at($0 * 10)))) }.isEmpty)
    }

    @Test func aPassDecidedLongAfterTheLookStillReapsWhenItsConnectionsStaySilent() {
        var policy = upPolicy(configuration())
        let asked = deadUntilThePeriodicLook(&policy)
        // The newest segment is the one from before the death: still dead, the full pass runs at once.
        let looked = policy.handle(
            .evidence(key(1), SegmentEvidence(at: at(asked + 5), sockets: 4, youngestSegmentAge: .milliseconds(asked + 500))))
        #expect(ends(looked) == [.stillDead], "\(looked)")
    }

    /// A look that cannot read everything (a named namespace gone) holds no pass back: the verdict
    /// was made on a complete one, and the pass reaches only what the look could read.
    @Test func anIncompleteLookBeforeAPassDecidesByWhatItRead() {
        for lifeInWhatWasRead in [false, true] {
            var policy = upPolicy(configuration())
            let asked = deadUntilThePeriodicLook(&policy)
            let age: Duration = lifeInWhatWasRead ? .milliseconds(100) : .milliseconds(asked + 500)
            let looked = policy.handle(
                .evidence(
                    key(1), SegmentEvidence(at: at(asked + 5), sockets: 4, youngestSegmentAge: age, complete: false, unreadable: ["gone"])))
            #expect(ends(looked) == (lifeInWhatWasRead ? [] : [.stillDead]), "life in what was read: \(lifeInWhatWasRead)")
        }
    }

    /// The kernel test of a fault near the prober (test_no_harm_rules_2): when the fault lifts, the
    /// first peer's answer releases the guard. A first pass it held longer than a probe interval was
    /// decided while nothing else answered: its verdict is made again, and idle connections (no life
    /// for a look to find) are kept when the backend answers its own next probe.
    @Test func aVerdictTheGuardHeldLongerThanAProbeIntervalIsMadeAgain() {
        for stillDead in [false, true] {
            var policy = upPolicy(configuration())
            deadAndHeld(&policy)
            let released = policy.handle(.probed(key(0), Self.ok, at: at(3_000)))
            #expect(released.contains(.guardReleased(pool: "api")) && ends(released).isEmpty, "\(released)")
            #expect(!released.contains { if case .needEvidence = $0 { true } else { false } }, "\(released)")
            #expect(!policy.stillEndsNow(key(1)))
            if stillDead {
                // Its own next probe fails after the fault lifted: the verdict is looked at again.
                let failed = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(3_200)))
                #expect(failed.contains { if case .needEvidence(key(1), _) = $0 { true } else { false } }, "\(failed)")
                for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(3_202))) }
                let looked = policy.handle(.evidence(key(1), SegmentEvidence(at: at(3_205), sockets: 4, youngestSegmentAge: .seconds(4))))
                #expect(ends(looked) == [.dead], "its first reap: \(looked)")
            } else {
                // It answers its own next probes: nothing of it is ever ended.
                var later: [Action] = []
                for ms in stride(from: 3_010, through: 4_000, by: 10) {
                    if ms == 3_200 || ms == 3_400 { later += policy.handle(.probed(key(1), Self.ok, at: at(ms))) }
                    later += policy.handle(.tick(at(ms)))
                }
                #expect(ends(later).isEmpty && policy.backends[key(1)]?.state == .up, "\(later)")
            }
        }
    }

    // MARK: - Missing evidence is no evidence of death

    @Test func anUnreadableLookAtItsConnectionsMakesNoOneDead() {
        var policy = upPolicy(configuration())
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(300)))
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(460))) }
        _ = policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(500)))
        let held = policy.handle(.evidence(key(1), SegmentEvidence(at: at(505), sockets: 0, youngestSegmentAge: nil, complete: false)))
        #expect(ends(held).isEmpty && suppressions(held) == [.evidenceMissing])
        #expect(policy.backends[key(1)]?.state == .up)
        // The next failure looks again; a complete look that shows no life is a death.
        #expect(policy.handle(.probed(key(1), Self.failed(.unreachable), at: at(700))) == [.needEvidence(key(1), since: at(500))])
        for other in [0, 2] { _ = policy.handle(.probed(key(other), Self.ok, at: at(702))) }
        let dead = policy.handle(.evidence(key(1), SegmentEvidence(at: at(705), sockets: 0, youngestSegmentAge: nil)))
        #expect(ends(dead) == [.dead])
    }

    // MARK: - The prober's own failures

    @Test func theProbersOwnFailuresMakeNoVerdictAndNoSurvivor() {
        var policy = upPolicy(configuration())
        for ms in stride(from: 300, through: 3_000, by: 200) {
            let actions = policy.handle(.probed(key(1), Self.failed(.local, after: 0), at: at(ms)))
            #expect(suppressions(actions) == [.proberFault])
        }
        #expect(policy.backends[key(1)]?.state == .up)
        #expect(policy.backends[key(1)]?.health.consecutiveFailures == 0)
        // Nor is a backend whose latest probe failed here a survivor for another.
        #expect(!policy.answersNow(key(1)))
        #expect(policy.answersNow(key(0)))
        // A probe gets through: the next fault is a new episode, logged again.
        _ = policy.handle(.probed(key(1), Self.ok, at: at(3_200)))
        #expect(
            policy.handle(.probed(key(1), Self.failed(.local, after: 0), at: at(3_400))) == [
                .suppressed(pool: "api", backend: backends[1], reason: .proberFault, log: true)
            ])
    }

    @Test func localErrnosAreTheProbersOwn() {
        #expect(ProbeFailure(connectErrno: 99) == .local)  // EADDRNOTAVAIL: local ports exhausted toward it
        #expect(ProbeFailure(connectErrno: 24) == .local)  // EMFILE
        #expect(ProbeFailure(connectErrno: 105) == .local)  // ENOBUFS
        #expect(ProbeFailure(connectErrno: 1) == .local)  // EPERM: a local rule
        #expect(ProbeFailure(connectErrno: 111) == .refused)
        #expect(ProbeFailure(connectErrno: 113) == .unreachable)
        #expect(ProbeFailure(connectErrno: nil) == .unreachable)
        #expect(!ProbeFailure.local.nothingAnswered)
    }

    @Test func aHealthPortFindingNothingIsAGoneEndpointWhileTheServicePortAnswers() {
        for health in [Self.failed(.refused, after: 1), Self.failed(.unreachable)] {
            #expect(health.withServicePort(Self.ok).failure == .unhealthy)
            #expect(health.withServicePort(Self.failed(.refused, after: 1)).failure == health.failure)
            #expect(health.withServicePort(Self.failed(.unreachable)).failure == health.failure)
            // Local ports exhausted toward the service port: no verdict, not a refusal.
            #expect(health.withServicePort(Self.failed(.local, after: 0)).failure == .local)
        }
        #expect(Self.failed(.unhealthy).withServicePort(Self.failed(.refused)).failure == .unhealthy)
    }

    // MARK: - One endpoint, one verdict

    /// The same backend in two pools: its sockets are the same whichever pool ends them.
    @Test func aSharedBackendIsReapedOnlyWhenEveryPoolHoldingItFindsItDead() {
        for secondHasSurvivor in [false, true] {
            var second = PoolConfiguration(name: "other", backends: secondHasSurvivor ? [backends[1], backends[2]] : [backends[1]])
            second.interval = .milliseconds(200)
            second.probe.timeout = .milliseconds(150)
            var configuration = configuration()
            configuration.pools.append(second)
            var policy = upPolicy(configuration)
            var actions: [Action] = []
            for pool in ["api", "other"] {
                _ = policy.handle(.probed(key(1, pool: pool), Self.failed(.unreachable), at: at(300)))
            }
            for pool in ["api", "other"] {
                for other in [0, 2] where pool == "api" || (other == 2 && secondHasSurvivor) {
                    _ = policy.handle(.probed(key(other, pool: pool), Self.ok, at: at(460)))
                }
            }
            for pool in ["api", "other"] {
                _ = policy.handle(.probed(key(1, pool: pool), Self.failed(.unreachable), at: at(500)))
                actions += policy.handle(.evidence(key(1, pool: pool), SegmentEvidence(at: at(505), sockets: 0, youngestSegmentAge: nil)))
            }
            actions += (51...100).flatMap { policy.handle(.tick(at($0 * 10))) }
            #expect(ends(actions).contains(.dead) == secondHasSurvivor, "second pool has a survivor: \(secondHasSurvivor)")
            if !secondHasSurvivor { #expect(suppressions(actions).contains(.sharedBackend)) }
        }
    }

    // MARK: - Configuration

    @Test func stuckAfterBelowTwoSecondsIsRefusedAndMinOutageIsRead() throws {
        let base = """
            pools:
              - name: api
                backends: ["10.0.0.1:6443"]
            """
        #expect(throws: ConfigurationError.self) {
            try YAMLConfigReader.configuration(yaml: base + "\n    stuck_after: 500ms", file: "c.yaml")
        }
        let stuck = try YAMLConfigReader.configuration(yaml: base + "\n    stuck_after: 2s", file: "c.yaml")
        #expect(stuck.pools[0].stuckAfter == .seconds(2))
        let outage = try YAMLConfigReader.configuration(yaml: base + "\n    min_outage: 300ms", file: "c.yaml")
        #expect(outage.pools[0].minOutage == .milliseconds(300))
        #expect(outage.pools[0].outageFloor == .milliseconds(300))
        // Probing alone never waits longer than it did: (fall - 1) x interval when that is shorter.
        #expect(try YAMLConfigReader.configuration(yaml: base, file: "c.yaml").pools[0].outageFloor == .seconds(1))
        #expect(throws: ConfigurationError.self) { try YAMLConfigReader.configuration(yaml: base + "\n    min_outage: 2m", file: "c.yaml") }
    }
}
