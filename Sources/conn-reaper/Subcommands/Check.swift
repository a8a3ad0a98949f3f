import ArgumentParser
import Reaper

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Say what this host allows: SOCK_DESTROY, ctnetlink, capabilities.",
        discussion: "Exit 1 when conn-reaper could not do its job in this network namespace.")

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let check = HostCheck()
        switch output {
        case .text:
            let rows = check.findings.map { finding in [finding.name, Self.label(finding.verdict), finding.detail] }
            print(TextTable.text([["Check", "Result", "Detail"]] + rows))
            print(check.agentCanWork ? "\nverdict: conn-reaper can do its job here" : "\nverdict: conn-reaper cannot do its job here")
        case .json:
            print(Self.document(check).text)
        }
        if !check.agentCanWork { throw ExitCode.failure }
    }

    /// `{"can_work": BOOL, "checks": [{"name", "result": ok|warning|failed, "detail"}]}`: the table, for machines.
    static func document(_ check: HostCheck) -> JSONValue {
        .object([
            ("can_work", .bool(check.agentCanWork)),
            (
                "checks",
                .array(
                    check.findings.map { finding in
                        .object([
                            ("name", .string(finding.name)), ("result", .string("\(finding.verdict)")), ("detail", .string(finding.detail)),
                        ])
                    })
            ),
        ])
    }

    static func label(_ verdict: HostCheck.Verdict) -> String {
        switch verdict {
        case .ok: "ok"
        case .warning: "warn"
        case .failed: "FAIL"
        }
    }
}
