import Health
import Testing

@Suite struct ConnectionReuseTests {
    /// Runs `probes` probes that all succeed on a server that keeps connections open; returns the
    /// connection each used.
    static func connections(_ reuse: inout ConnectionReuse, probes: Int) -> [ConnectionReuse.Connection] {
        (0..<probes).map { _ in
            let connection = reuse.next
            reuse.finished(on: connection, .keptOpen)
            return connection
        }
    }

    @Test func aFreshConnectionAtLeastEveryNProbes() {
        var reuse = ConnectionReuse(reconnectEvery: 4)
        let used = Self.connections(&reuse, probes: 12)
        #expect(used == [.fresh, .kept, .kept, .kept, .fresh, .kept, .kept, .kept, .fresh, .kept, .kept, .kept])
    }

    @Test func theDefaultOpensOneConnectionInTen() {
        var reuse = ConnectionReuse(reconnectEvery: ProbeSpec.defaultReconnectEvery)
        let used = Self.connections(&reuse, probes: 100)
        #expect(used.filter { $0 == .fresh }.count == 10)
    }

    @Test func everyProbeAfterAFailureIsFreshUntilOneSucceeds() {
        var reuse = ConnectionReuse(reconnectEvery: 10)
        _ = Self.connections(&reuse, probes: 3)
        #expect(reuse.next == .kept)
        reuse.finished(on: .kept, .failed)
        #expect(reuse.next == .fresh && !reuse.hasKeptConnection)
        reuse.finished(on: .fresh, .failed)
        #expect(reuse.next == .fresh)
        reuse.finished(on: .fresh, .keptOpen)
        #expect(reuse.next == .kept && reuse.served == 1)
    }

    @Test func aServerThatClosesGetsAFreshConnectionEachTime() {
        var reuse = ConnectionReuse(reconnectEvery: 10)
        for _ in 0..<5 {
            #expect(reuse.next == .fresh)
            reuse.finished(on: .fresh, .closedByServer)
        }
    }

    @Test func reconnectEveryOneNeverReuses() {
        var reuse = ConnectionReuse(reconnectEvery: 1)
        #expect(Self.connections(&reuse, probes: 5) == Array(repeating: .fresh, count: 5))
    }

    /// A backend that stops accepting new connections is probed on a new one within N probes, however
    /// well its kept connection still answers.
    @Test func aBackendThatStopsAcceptingIsSeenWithinNProbes() {
        for every in [1, 2, 3, 10, 25] {
            for start in 0..<every {
                var reuse = ConnectionReuse(reconnectEvery: every)
                _ = Self.connections(&reuse, probes: start)
                let untilFresh = (0..<every).firstIndex { _ in
                    let connection = reuse.next
                    reuse.finished(on: connection, .keptOpen)
                    return connection == .fresh
                }
                #expect(untilFresh != nil, "reconnect_every \(every), after \(start) probes")
            }
        }
    }

    @Test func aSilenceWithTheRequestUnacknowledgedIsNothingAnswering() {
        // A dead peer: the request's segment is in flight, unacknowledged.
        #expect(
            ConnectionReuse.silenceFailure(unacknowledgedSegments: 1, millisecondsSinceLastAck: 1200, millisecondsSinceRequest: 150)
                == .unreachable)
        // A local drop: nothing left the host, so nothing is in flight, and no ACK came since the request.
        #expect(
            ConnectionReuse.silenceFailure(unacknowledgedSegments: 0, millisecondsSinceLastAck: 1150, millisecondsSinceRequest: 150)
                == .unreachable)
        #expect(
            ConnectionReuse.silenceFailure(unacknowledgedSegments: 0, millisecondsSinceLastAck: 150, millisecondsSinceRequest: 150)
                == .unreachable)
    }

    @Test func aSilenceAfterTheKernelAcknowledgedIsUnhealthy() {
        // A wedged process: its kernel acknowledged the request (a delayed ACK 40 ms later), nothing answered.
        #expect(
            ConnectionReuse.silenceFailure(unacknowledgedSegments: 0, millisecondsSinceLastAck: 110, millisecondsSinceRequest: 150)
                == .unhealthy)
    }

    @Test func onlyAKeptConnectionClosedBeforeAResponseIsRetriedFresh() {
        #expect(ConnectionReuse.retriesFresh(on: .kept, closedBeforeResponse: true))
        #expect(!ConnectionReuse.retriesFresh(on: .kept, closedBeforeResponse: false))
        #expect(!ConnectionReuse.retriesFresh(on: .fresh, closedBeforeResponse: true))
    }
}
