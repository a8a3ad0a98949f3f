import Foundation
import Hummingbird
import Logging
import NIOCore

/// /metrics (Prometheus text), /healthz (loops alive), /readyz (config loaded, first probe round
/// done), /status (JSON: pools, backends, states, last change, last reap).
public enum StatusServer {
    /// `onBound` runs once the listener is bound: from then on the endpoints answer.
    public static func make(
        listen: String, port: Int, state: AgentState, metrics: AgentMetrics, logger: Logger,
        onBound: @escaping @Sendable () -> Void = {}
    ) -> some ApplicationProtocol {
        let router = Router()
        router.get("metrics") { _, _ -> Response in
            text(metrics.exposition(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("healthz") { _, _ -> Response in
            state.loopsAlive() ? text("ok\n") : text("probe loops stalled\n", status: .serviceUnavailable)
        }
        router.get("readyz") { _, _ -> Response in
            state.ready() ? text("ready\n") : text("first probe round not done\n", status: .serviceUnavailable)
        }
        router.get("status") { _, _ -> Response in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            let body = (try? encoder.encode(state.status())) ?? Data("{}".utf8)
            return text(String(decoding: body, as: UTF8.self) + "\n", contentType: "application/json")
        }
        return Application(
            router: router,
            configuration: .init(address: .hostname(listen, port: port), serverName: nil),
            onServerRunning: { _ in onBound() },
            logger: logger)
    }

    static func text(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
