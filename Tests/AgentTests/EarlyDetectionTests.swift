import NetworkAddress
import Testing

@testable import Agent

/// Early detection both ways: a backend whose connections retransmit while its peers' are
/// acknowledged is probed at once; a local fault, a lone backend, a backend not up, a false alarm
/// and a lossy path never turn into more than the probes the rules allow.
@Suite struct EarlyDetectionTests {
    let a = Endpoint(address: .v4(0x0A00_0001), port: 6443)
    let b = Endpoint(address: .v4(0x0A00_0002), port: 6443)
    let c = Endpoint(address: .v4(0x0A00_0003), port: 6443)
    let start = ContinuousClock.now

    func detector(fall: Int = 3, timeout: Duration = .seconds(1), backends: [Endpoint]? = nil) -> EarlyDetection {
        var detection = EarlyDetection(
            pools: [.init(name: "api", backends: backends ?? [a, b, c], fall: fall, probeTimeout: timeout)])
        for backend in backends ?? [a, b, c] { _ = detection.handle(.state(BackendKey(pool: "api", backend: backend), .up, at: start)) }
        return detection
    }

    func key(_ backend: Endpoint) -> BackendKey { BackendKey(pool: "api", backend: backend) }

    func observation(_ retransmitting: [Endpoint: Int], connections: [Endpoint: Int]? = nil, after: Duration = .zero)
        -> EarlyDetection.Event
    {
        .observed(
            .init(
                pool: "api", connections: connections ?? [a: 10, b: 10, c: 10], retransmitting: retransmitting, at: start + after))
    }

    func probes(_ actions: [EarlyDetection.Action]) -> [BackendKey] {
        actions.compactMap { if case .probe(let key, _, _) = $0 { key } else { nil } }
    }

    @Test func aBackendRetransmittingAloneIsProbedAtOnceThenFallTimesInAboutOneTimeout() {
        var detection = detector()
        let first = detection.handle(observation([c: 4]))
        #expect(first.first.map { if case .suspected(key(c), .retransmits, _) = $0 { true } else { false } } == true)
        #expect(first.contains(.probe(key(c), timeout: .milliseconds(200), signal: .retransmits)))
        #expect(detection.nextDeadline == start + .milliseconds(10))
        #expect(probes(detection.handle(.tick(start + .milliseconds(10)))) == [key(c)])
        #expect(probes(detection.handle(.tick(start + .milliseconds(20)))) == [key(c)])
        #expect(probes(detection.handle(.tick(start + .milliseconds(30)))) == [], "fall probes at once")
        // The policy found it dead: the verdict, and how it was detected, for the reap's audit line.
        let verdict = detection.handle(.state(key(c), .dead, at: start + .milliseconds(320)))
        #expect(
            verdict == [
                .cleared(key(c), .retransmits, verdict: .dead, after: .milliseconds(320)),
                .probeForReturn(key(c), timeout: .milliseconds(200)),
            ])
        #expect(detection.detections[key(c)]?.signal == .retransmits)
        #expect(detection.nextDeadline == start + .milliseconds(420), "watching for its return")
    }

    /// An outage just long enough to look like a death: once the backend answers, one probe away.
    @Test func anEarlyDeathIsWatchedForItsReturnAFewSecondsThenLeftToTheSchedule() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        let dead = start + .milliseconds(300)
        let verdict = detection.handle(.state(key(c), .dead, at: dead))
        var sent: [Duration] = verdict.contains(.probeForReturn(key(c), timeout: .milliseconds(200))) ? [.zero] : []
        var now = dead
        while let next = detection.nextDeadline, next < dead + .seconds(10) {
            now = next
            let actions = detection.handle(.tick(now))
            #expect(probes(actions).isEmpty, "not early probes: counted apart")
            if actions.contains(.probeForReturn(key(c), timeout: .milliseconds(200))) { sent.append(now - dead) }
        }
        #expect(sent.count == 50, "at once, then every 100 ms for 5 s: \(sent)")
        #expect(sent.first == .zero)
        #expect(sent.dropFirst().first == .milliseconds(100))
        #expect(sent.last == .milliseconds(4900))
        #expect(detection.nextDeadline == nil)
    }

    @Test func itsFirstAnswerAfterAnEarlyDeathEndsTheWatchAndQuietsItsSignals() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        _ = detection.handle(.state(key(c), .dead, at: start + .milliseconds(300)))
        _ = detection.handle(.tick(start + .milliseconds(400)))
        #expect(detection.handle(.probed(key(c), success: false, at: start + .milliseconds(560))).isEmpty)
        let answered = detection.handle(.probed(key(c), success: true, at: start + .milliseconds(800)))
        #expect(answered == [.answeredAgain(key(c), .retransmits, after: .milliseconds(800))])
        #expect(detection.nextDeadline == nil)
        _ = detection.handle(.state(key(c), .up, at: start + .seconds(2)))
        #expect(detection.handle(observation([c: 4], after: .seconds(3))).isEmpty, "quiet after answering again")
        #expect(!detection.handle(observation([c: 4], after: .seconds(11))).isEmpty)
    }

    @Test func aDeathByTheScheduleOrALeftDeathIsNotWatched() {
        var detection = detector()
        _ = detection.handle(.state(key(c), .dead, at: start))
        #expect(detection.nextDeadline == nil, "dead by regular probes: the outage was long")
        _ = detection.handle(observation([a: 4]))
        _ = detection.handle(.state(key(a), .dead, at: start + .milliseconds(300)))
        #expect(detection.nextDeadline != nil)
        _ = detection.handle(.state(key(a), .unhealthy, at: start + .milliseconds(400)))
        #expect(detection.nextDeadline == nil, "no longer dead: nothing to watch for")
    }

    @Test func theEarlyTimeoutIsThePoolsWhenShorter() {
        var detection = detector(timeout: .milliseconds(100))
        #expect(detection.handle(observation([c: 1])).contains(.probe(key(c), timeout: .milliseconds(100), signal: .retransmits)))
    }

    @Test func everyBackendRetransmittingIsOurFaultNotTheirs() {
        var detection = detector()
        #expect(detection.handle(observation([a: 2, b: 3, c: 4])).isEmpty)
        #expect(detection.handle(observation([b: 1, c: 4])).isEmpty, "one peer retransmitting too: no signal")
    }

    @Test func nothingToCompareWithIsNoSignal() {
        var detection = detector()
        #expect(detection.handle(observation([c: 4], connections: [c: 10])).isEmpty, "no connections to the others")
        var lone = detector(backends: [a])
        #expect(lone.handle(.observed(.init(pool: "api", connections: [a: 5], retransmitting: [a: 5], at: start))).isEmpty)
    }

    @Test func onlyABackendBelievedUpIsSuspected() {
        var detection = detector()
        for state in [BackendState.unknown, .unhealthy, .dead] {
            _ = detection.handle(.state(key(c), state, at: start))
            #expect(detection.handle(observation([c: 4])).isEmpty, "\(state)")
        }
    }

    @Test func aSuccessIsAFalseAlarmAndQuietsTheBackendForAWhile() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        let cleared = detection.handle(.probed(key(c), success: true, at: start + .milliseconds(5)))
        #expect(cleared == [.cleared(key(c), .retransmits, verdict: .falseAlarm, after: .milliseconds(5))])
        #expect(probes(detection.handle(.tick(start + .milliseconds(60)))) == [], "no more early probes after a success")
        #expect(detection.handle(observation([c: 4], after: .seconds(5))).isEmpty, "quiet after a false alarm")
        #expect(!detection.handle(observation([c: 4], after: .seconds(11))).isEmpty, "heard again once the quiet is over")
    }

    /// Both ways: a heartbeat's false alarm quiets the heartbeat, not the retransmissions that show the
    /// same backend dying two seconds later; and the retransmissions' own false alarm quiets them.
    @Test func aFalseAlarmQuietsOnlyTheSignalThatRaisedIt() {
        var detection = detector()
        _ = detection.handle(.signal(key(c), .heartbeat, detail: "keepalive unacknowledged", at: start))
        _ = detection.handle(.probed(key(c), success: true, at: start + .milliseconds(5)))
        #expect(detection.handle(.signal(key(c), .heartbeat, detail: "again", at: start + .seconds(1))).isEmpty, "the heartbeat is quiet")
        let later = detection.handle(observation([c: 4], after: .seconds(2)))
        #expect(probes(later) == [key(c)], "the retransmissions are heard: \(later)")
        #expect(later.contains(.suspected(key(c), .retransmits, detail: "4 of 10 connections retransmitting, none of 20 to 2 others")))
        _ = detection.handle(.probed(key(c), success: true, at: start + .seconds(2) + .milliseconds(5)))
        #expect(detection.handle(observation([c: 4], after: .seconds(3))).isEmpty, "now the retransmissions are quiet too")
        #expect(!detection.handle(.signal(key(c), .carrier, detail: "eth0 down", at: start + .seconds(3))).isEmpty, "not the carrier")
    }

    @Test func aFailureDoesNotStopTheScheduleAndARepeatedSignalAddsNothing() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        #expect(detection.handle(.probed(key(c), success: false, at: start + .milliseconds(10))).isEmpty)
        #expect(detection.handle(observation([c: 9], after: .milliseconds(20))).isEmpty, "already a suspect")
        #expect(probes(detection.handle(.tick(start + .milliseconds(10)))) == [key(c)])
    }

    @Test func noVerdictInTimeLeavesItToTheSchedule() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        _ = detection.handle(.tick(start + .milliseconds(20)))
        _ = detection.handle(.state(key(c), .unhealthy, at: start + .milliseconds(100)))
        // Its connections still had a recent segment: one more probe once half a second of silence could be.
        #expect(detection.nextDeadline == start + .milliseconds(550))
        #expect(probes(detection.handle(.tick(start + .milliseconds(550)))) == [key(c)])
        let decideBy = start + .milliseconds(550) + .milliseconds(200) + .seconds(1)
        #expect(detection.nextDeadline == decideBy)
        #expect(detection.handle(.tick(decideBy)) == [.cleared(key(c), .retransmits, verdict: .undecided, after: .milliseconds(1750))])
        #expect(detection.nextDeadline == nil)
    }

    @Test func aReloadForgetsBackendsThatLeft() {
        var detection = detector()
        _ = detection.handle(observation([c: 4]))
        detection.apply([.init(name: "api", backends: [a, b], fall: 3, probeTimeout: .seconds(1))])
        #expect(detection.nextDeadline == nil)
        #expect(detection.handle(.tick(start + .seconds(1))).isEmpty)
    }

    /// The other half of "do no harm" for early probes: their verdict window is short, so the policy
    /// counts a segment within a probe interval (at most half a second) as life, however short the window.
    @Test func aSegmentInTheLastHalfSecondIsAlwaysLife() {
        let now = ContinuousClock.now
        let window = now - .milliseconds(200)
        let recent = SegmentEvidence.recentEnoughCap
        #expect(SegmentEvidence(at: now, sockets: 3, youngestSegmentAge: .milliseconds(300)).showsLife(after: window, recentEnough: recent))
        #expect(!SegmentEvidence(at: now, sockets: 3, youngestSegmentAge: .milliseconds(300)).showsLife(after: window))
        #expect(
            !SegmentEvidence(at: now, sockets: 3, youngestSegmentAge: .milliseconds(700)).showsLife(after: window, recentEnough: recent))
        #expect(SegmentEvidence(at: now, sockets: 3, youngestSegmentAge: .milliseconds(700)).showsLife(after: now - .seconds(2)))
        #expect(!SegmentEvidence(at: now, sockets: 0, youngestSegmentAge: nil).showsLife(after: window, recentEnough: recent))
    }

    /// A neighbour or carrier signal names one backend: no peer comparison, the same early probes
    /// and the same guards (only a backend up, once per suspicion).
    @Test func aNeighbourOrCarrierSignalProbesThatBackendAlone() {
        var detection = detector()
        let actions = detection.handle(.signal(key(b), .neighbour, detail: "10.0.0.2 FAILED on eth0", at: start))
        #expect(actions.contains(.probe(key(b), timeout: .milliseconds(200), signal: .neighbour)))
        #expect(detection.handle(.signal(key(b), .carrier, detail: "eth0 down", at: start)).isEmpty, "already a suspect")
        _ = detection.handle(.state(key(c), .dead, at: start))
        #expect(detection.handle(.signal(key(c), .carrier, detail: "eth0 down", at: start)).isEmpty, "not up")
        let other = BackendKey(pool: "api", backend: Endpoint(address: .v4(0x0A00_0009), port: 6443))
        #expect(detection.handle(.signal(other, .carrier, detail: "", at: start)).isEmpty, "not in the pool")
    }
}
