import Agent
import Foundation
import Logging
import Synchronization
import Testing

@Suite struct LogHandlerTests {
    final class Lines: Sendable {
        let storage = Mutex<[String]>([])
        func append(_ line: String) { storage.withLock { $0.append(line) } }
        var all: [String] { storage.withLock { $0 } }
    }

    @Test func logfmtQuotesOnlyWhatNeedsIt() {
        let lines = Lines()
        let logger = Logger(label: "t") { StructuredLogHandler(label: $0, format: .logfmt, sink: lines.append) }
        logger.notice("reaped", metadata: ["pool": "api server", "sockets": "12", "note": "a=\"b\""])
        let line = lines.all[0]
        #expect(line.hasPrefix("time="))
        #expect(line.contains(" level=notice msg=reaped note=\"a=\\\"b\\\"\" pool=\"api server\" sockets=12"))
    }

    @Test func jsonIsOneObjectPerLineWithNumbersWhereNumbersWereLogged() throws {
        let lines = Lines()
        let logger = Logger(label: "t") { StructuredLogHandler(label: $0, format: .json, sink: lines.append) }
        logger.error(
            "every backend of the pool looks down",
            metadata: [
                "pool": "007", "backends": .stringConvertible(3), "duration_ms": .stringConvertible(1.5),
                "dry_run": .stringConvertible(false),
            ])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lines.all[0].utf8)) as? [String: Any])
        #expect(object["level"] as? String == "error")
        #expect(object["pool"] as? String == "007", "a string that looks like a number stays a string")
        #expect(object["backends"] as? Int == 3)
        #expect(object["duration_ms"] as? Double == 1.5)
        #expect(object["dry_run"] as? Bool == false)
        #expect(!lines.all[0].contains("\n"))
    }

    @Test func logfmtEscapesTabsCarriageReturnsAndOtherControlCharacters() {
        let lines = Lines()
        let logger = Logger(label: "t") { StructuredLogHandler(label: $0, format: .logfmt, sink: lines.append) }
        logger.warning("probe failed", metadata: ["detail": "a\tb\rc\nd\u{1}e", "plain": "x\ty"])
        let line = lines.all[0]
        #expect(line.contains(#"detail="a\tb\rc\nd\u0001e""#), "\(line)")
        #expect(line.contains(#"plain="x\ty""#), "a tab alone makes a value quoted: \(line)")
        #expect(!line.contains("\t") && !line.contains("\r") && !line.contains("\n"))
    }

    @Test func theLevelFollowsItsControlAtOnce() {
        let lines = Lines()
        let control = LogLevelControl(.info)
        let logger = Logger(label: "t") { StructuredLogHandler(label: $0, format: .logfmt, level: control, sink: lines.append) }
        logger.debug("hidden")
        control.current = .debug
        logger.debug("shown")
        control.current = .error
        logger.warning("hidden too")
        #expect(lines.all.count == 1 && lines.all[0].contains("msg=shown"), "\(lines.all)")
    }
}
