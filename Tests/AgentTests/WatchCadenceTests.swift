import Agent
import Testing

/// The retransmission watch looks every 50 ms while data is out, and otherwise waits as long as a
/// retransmission could not come anyway.
@Suite struct WatchCadenceTests {
    let fast: Duration = .milliseconds(50)

    @Test func dataOutMeansTheFastCadence() {
        #expect(WatchCadence.next(armed: true, shortestRTO: .milliseconds(200), watching: true, fast: fast) == fast)
    }

    @Test func quietSentinelsWaitUntilOneFastLookBeforeTheShortestRTO() {
        #expect(WatchCadence.next(armed: false, shortestRTO: .milliseconds(204), watching: true, fast: fast) == .milliseconds(150))
        #expect(WatchCadence.next(armed: false, shortestRTO: .milliseconds(180), watching: true, fast: fast) == .milliseconds(130))
        #expect(WatchCadence.next(armed: false, shortestRTO: .seconds(1), watching: true, fast: fast) == WatchCadence.slowest)
    }

    @Test func aShortRTOOrAnUnknownOneKeepsTheFastCadence() {
        // A route with rto_min 5ms: a retransmission may come 5 ms after a send.
        #expect(WatchCadence.next(armed: false, shortestRTO: .milliseconds(5), watching: true, fast: fast) == fast)
        #expect(WatchCadence.next(armed: false, shortestRTO: nil, watching: true, fast: fast) == fast)
    }

    @Test func withoutSentinelsTheWatchWaitsTheLongest() {
        #expect(WatchCadence.next(armed: false, shortestRTO: nil, watching: false, fast: fast) == WatchCadence.slowest)
        #expect(WatchCadence.next(armed: false, shortestRTO: nil, watching: false, fast: .seconds(1)) == .seconds(1))
    }

    /// Whatever the moment of a send, a look falls between it and its first retransmission, so the
    /// look after the retransmission comes at most `fast` after it: the same as looking every `fast`.
    @Test func noRetransmissionIsSeenLaterThanByTheFastCadence() {
        let rto = 200
        for send in stride(from: 0, to: 600, by: 7) {
            var now = 0
            var seen: Int?
            while seen == nil, now < 2000 {
                let armed = now >= send && now < send + rto
                if now >= send + rto { seen = now; break }
                now += Int(
                    WatchCadence.next(armed: armed, shortestRTO: .milliseconds(rto), watching: true, fast: fast).components.attoseconds
                        / 1_000_000_000_000_000)
            }
            #expect(seen.map { $0 - (send + rto) <= 50 } == true, "send at \(send) ms: seen at \(seen.map(String.init) ?? "never")")
        }
    }
}
