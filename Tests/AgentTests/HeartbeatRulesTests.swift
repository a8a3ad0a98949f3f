import Agent
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Which ends of a heartbeat are early signals, and how soon it is made again.
@Suite struct HeartbeatRulesTests {
    @Test func onlyAnEstablishedHeartbeatThatTimedOutIsASignal() {
        #expect(HeartbeatRules.isSignal(HeartbeatRules.cause(of: ETIMEDOUT), established: true))
        #expect(HeartbeatRules.isSignal(HeartbeatRules.cause(of: EHOSTUNREACH), established: true))
        #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: ETIMEDOUT), established: false), "a connect timeout")
        for live in [ECONNREFUSED, ECONNRESET, EPIPE, ECONNABORTED] as [Int32] {
            #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: live), established: true), "errno \(live)")
        }
        #expect(!HeartbeatRules.isSignal(HeartbeatRules.cause(of: nil), established: true), "a FIN")
    }

    @Test func causesAreNamedForTheMetric() {
        #expect(HeartbeatRules.cause(of: nil) == .closed)
        #expect(HeartbeatRules.cause(of: ECONNREFUSED) == .refused)
        #expect(HeartbeatRules.cause(of: ECONNRESET) == .reset)
        #expect(HeartbeatRules.cause(of: ECONNABORTED) == .other, "our own reap of it")
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
