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

    @Test func jsonIsOneObjectPerLineWithNumbers() throws {
        let lines = Lines()
        let logger = Logger(label: "t") { StructuredLogHandler(label: $0, format: .json, sink: lines.append) }
        logger.error("every backend of the pool looks down", metadata: ["pool": "apiserver", "backends": "3"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lines.all[0].utf8)) as? [String: Any])
        #expect(object["level"] as? String == "error")
        #expect(object["pool"] as? String == "apiserver")
        #expect(object["backends"] as? Int == 3)
        #expect(!lines.all[0].contains("\n"))
    }
}
