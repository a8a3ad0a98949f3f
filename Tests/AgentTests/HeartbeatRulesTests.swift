import Agent
import SystemPackage
import Testing

/// Which ends of a heartbeat are early signals, and how soon it is made again.
@Suite struct HeartbeatRulesTests {
    @Test func onlyAnEstablishedHeartbeatThatTimedOutIsASignal() {
        #expect(HeartbeatRules.isSignal(HeartbeatRules.cause(of: .timedOut), established: true))
        #expect(HeartbeatRules.isSignal(HeartbeatRules.cause(of: .noRouteToHost), established: true))
        #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: .timedOut), established: false), "a connect timeout")
        for live: Errno in [.connectionRefused, .connectionReset, .brokenPipe, .connectionAbort] {
            #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: live), established: true), "errno \(live)")
        }
        #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: nil), established: true), "a FIN")
    }

    @Test func causesAreNamedForTheMetric() {
        #expect(HeartbeatRules.cause(of: nil) == .closed)
        #expect(HeartbeatRules.cause(of: .connectionRefused) == .refused)
        #expect(HeartbeatRules.cause(of: .connectionReset) == .reset)
        #expect(HeartbeatRules.cause(of: .connectionAbort) == .other, "our own reap of it")
        #expect(HeartbeatRules.Phase.retrying(after: .refused).description == "retrying after refused")
    }

    @Test func theBackoffStartsAtASecondAndStopsAtTwiceTheProbeInterval() {
        let waits = (1...6).map { HeartbeatRules.backoff(afterFailures: $0, probeInterval: .seconds(2)) }
        #expect(waits == [.seconds(1), .seconds(2), .seconds(4), .seconds(4), .seconds(4), .seconds(4)])
        #expect(HeartbeatRules.backoff(afterFailures: 0, probeInterval: .seconds(2)) == .seconds(1))
        #expect(HeartbeatRules.backoff(afterFailures: 1, probeInterval: .milliseconds(100)) == .seconds(1))
        #expect(HeartbeatRules.backoff(afterFailures: 9, probeInterval: .milliseconds(100)) == .seconds(2))
        #expect(HeartbeatRules.backoff(afterFailures: 1_000, probeInterval: .seconds(10)) == .seconds(20))
    }
}
