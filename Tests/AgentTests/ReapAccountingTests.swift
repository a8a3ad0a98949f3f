import Foundation
import Logging
import NetworkAddress
import Reaper
import SockDiag
import Testing

@testable import Agent

/// What a pass's audit lines say of a destroy whose ack was lost and whose socket was still there
/// at the last look: not ended, and said so, where a refused one would be.
@Suite struct ReapAccountingTests {
    static let backend = ReapExecutorTests.backends[1]

    static func result(_ port: UInt16, _ outcome: PurgeReport.Outcome) -> PurgeReport.SocketResult {
        var socket = ReapExecutorTests.socket(port)
        socket.id.cookie = UInt64(port)
        return PurgeReport.SocketResult(socket: socket, outcome: outcome)
    }

    static func accounting(_ lines: LogHandlerTests.Lines) -> ReapAccounting {
        ReapAccounting(
            state: AgentState(configuration: ReapExecutorTests.configuration()), metrics: AgentMetrics(),
            logger: Logger(label: "test") { StructuredLogHandler(label: $0, format: .logfmt, sink: lines.append) })
    }

    @Test func aReapsAuditLineCountsTheUnconfirmedApartFromWhatEnded() throws {
        let lines = LogHandlerTests.Lines()
        var report = PurgeReport()
        report.sockets = [Self.result(41000, .ended), Self.result(41001, .unconfirmed)]
        let tally = Self.accounting(lines).reaped(
            [NamespaceReport(namespace: nil, report: report)], key: BackendKey(pool: "web", backend: Self.backend), reason: .stillDead,
            dryRun: false)
        #expect(tally.ended == 1 && tally.flowsEnded == 1)
        let line = try #require(lines.all.first { $0.contains("msg=reaped") })
        let fields = Set(line.split(separator: " "))
        #expect(fields.isSuperset(of: ["sockets=1", "unconfirmed=1", "errors=0"]), "\(line)")
    }

    @Test func aPassThatEndedNothingButLeftAnUnconfirmedOneIsAudited() {
        let lines = LogHandlerTests.Lines()
        var report = PurgeReport()
        report.sockets = [Self.result(41001, .unconfirmed)]
        _ = Self.accounting(lines).reaped(
            [NamespaceReport(namespace: nil, report: report)], key: BackendKey(pool: "web", backend: Self.backend), reason: .stillDead,
            dryRun: false)
        #expect(lines.all.contains { $0.contains("msg=reaped") && $0.split(separator: " ").contains("unconfirmed=1") })
    }

    @Test func aStuckConnectionLeftUnconfirmedIsLoggedWithItsTrouble() throws {
        let lines = LogHandlerTests.Lines()
        var report = PurgeReport()
        report.sockets = [Self.result(41000, .ended), Self.result(41001, .unconfirmed)]
        let tally = Self.accounting(lines).stuck([NamespaceReport(namespace: nil, report: report)], pool: "web", dryRun: false)
        #expect(tally.ended == 1)
        let ended = try #require(lines.all.first { $0.contains("cookie=41000") })
        let unconfirmed = try #require(lines.all.first { $0.contains("cookie=41001") })
        #expect(!ended.contains("error="))
        #expect(unconfirmed.contains("error="), "\(unconfirmed)")
    }

    @Test func aRebalanceCloseLeftUnconfirmedIsLoggedWithItsTroubleAndNotCountedAsClosed() throws {
        let lines = LogHandlerTests.Lines()
        var report = PurgeReport()
        report.sockets = [Self.result(41001, .unconfirmed)]
        let connection = ConnectionSample(
            backend: Self.backend, local: Endpoint(address: .v4(0x0A09_0064), port: 41001), cookie: 41001,
            sinceDataSent: .seconds(30), sinceDataReceived: .seconds(30))
        let tally = Self.accounting(lines).rebalanced(
            [NamespaceReport(namespace: nil, report: report)], key: BackendKey(pool: "web", backend: Self.backend),
            connection: connection, dryRun: false)
        #expect(tally.ended == 0)
        let line = try #require(lines.all.first { $0.contains("reason=rebalance") })
        #expect(line.contains("error="), "\(line)")
    }
}
