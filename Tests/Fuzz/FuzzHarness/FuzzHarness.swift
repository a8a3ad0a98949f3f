#if canImport(Glibc)
    import Glibc
#endif

/// One fuzz target: any bytes in, a trap or sanitizer report out when the code under test breaks.
public typealias FuzzTarget = @Sendable ([UInt8]) -> Void

/// The target FUZZ_TARGET names, chosen once; an unknown name stops the run with the known ones.
public enum FuzzHarness {
    nonisolated(unsafe) static var chosen: FuzzTarget?

    public static func run(_ targets: [String: FuzzTarget], _ input: UnsafeBufferPointer<UInt8>) -> CInt {
        if chosen == nil { chosen = target(targets) }
        chosen?(Array(input))
        return 0
    }

    static func target(_ targets: [String: FuzzTarget]) -> FuzzTarget {
        let name = getenv("FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let target = targets[name] else {
            complain("FUZZ_TARGET must be one of: \(targets.keys.sorted().joined(separator: ", ")) (got '\(name)')")
            exit(2)
        }
        return target
    }

    /// `FUZZ_TARGET=NAME program FILE...`: each file once through the target, without libFuzzer.
    public static func replay(_ targets: [String: FuzzTarget]) {
        let target = target(targets)
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                complain("cannot open \(path)")
                exit(1)
            }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = fread(&buffer, 1, buffer.count, file)
                if count <= 0 { break }
                bytes += buffer[..<count]
            }
            fclose(file)
            target(bytes)
        }
        print("replayed \(CommandLine.arguments.count - 1) inputs")
    }

    static func complain(_ text: String) {
        let line = Array("\(text)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}
