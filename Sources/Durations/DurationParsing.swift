/// Durations as users write them in configs and flags: `500ms`, `1s`, `1.5s`, `2m`, `0s`, `0`.
public enum DurationParsing {
    public static func parse(_ text: String) -> Duration? {
        guard let seconds = seconds(text) else { return nil }
        let nanoseconds = (seconds * 1e9).rounded()
        // Duration counts Int64 nanoseconds (about 292 years): a longer one has no value to become.
        guard nanoseconds < Double(Int64.max) else { return nil }
        return .nanoseconds(Int64(nanoseconds))
    }

    /// The length in seconds as written, whatever its size; nil when it is not a duration.
    static func seconds(_ text: String) -> Double? {
        let trimmed = text.trimmingPrefix(while: \.isWhitespace)
        if trimmed == "0" { return 0 }
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, seconds) in units where trimmed.hasSuffix(suffix) {
            guard let value = Double(trimmed.dropLast(suffix.count)), value >= 0, value.isFinite else { return nil }
            return value * seconds
        }
        return nil
    }

    public struct Failure: Error, Equatable {
        public var message: String
    }

    /// `parse`, with a message that says what is wrong (a negative one is named as such).
    public static func parseChecked(_ text: String) throws(Failure) -> Duration {
        if let value = parse(text) { return value }
        if text.trimmingPrefix(while: \.isWhitespace).hasPrefix("-"),
            seconds(String(text.trimmingPrefix(while: \.isWhitespace).dropFirst())) != nil
        {
            throw Failure(message: "'\(text)' is negative: write 0 or a positive duration")
        }
        if seconds(text) != nil { throw Failure(message: "'\(text)' is too long (at most 292 years)") }
        throw Failure(message: "'\(text)' is not a duration (write it like 500ms, 1s, 2m)")
    }

    public static func format(_ duration: Duration) -> String {
        let milliseconds = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
        if milliseconds == 0 { return "0s" }
        if milliseconds.truncatingRemainder(dividingBy: 1000) == 0 { return "\(Int(milliseconds / 1000))s" }
        return milliseconds == milliseconds.rounded() ? "\(Int(milliseconds))ms" : "\(milliseconds)ms"
    }
}

extension Duration {
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
