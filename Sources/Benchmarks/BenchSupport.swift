import SystemSupport

/// A benchmark that could not run or measure, with what went wrong.
public struct BenchFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The warm-up and the measured window of a load benchmark.
public struct BenchWindow: Sendable {
    /// Seconds to measure.
    public var duration: Double = 10
    /// Seconds of unmeasured warm-up before the measurement.
    public var warmup: Double = 1

    public init(duration: Double = 10, warmup: Double = 1) {
        self.duration = duration
        self.warmup = warmup
    }

    /// Throws when the window is out of range (the messages name the CLI's options).
    public func validate() throws(BenchFailure) {
        guard duration > 0, duration <= 86_400 else { throw BenchFailure("--duration must be in (0, 86400] seconds") }
        guard warmup >= 0, warmup <= 3_600 else { throw BenchFailure("--warmup must be in [0, 3600] seconds") }
    }

    /// When measuring starts and ends (monotonic nanoseconds), for a load started at `start`.
    func bounds(startingAt start: UInt64) -> (from: UInt64, until: UInt64) {
        let from = start + UInt64(warmup * 1e9)
        return (from, from + UInt64(duration * 1e9))
    }
}

/// Throws "`option` must be a...b" unless `value` is in `range`.
func checkRange(_ value: Int, _ range: ClosedRange<Int>, _ option: String) throws(BenchFailure) {
    guard range.contains(value) else {
        throw BenchFailure("\(option) must be \(range.lowerBound)...\(range.upperBound)")
    }
}

/// `value` with exactly `digits` decimals (no exponent form; "null" when not finite): the benchmarks' JSON lines.
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "null" }
    var scale: Double = 1
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int64((abs(value) * scale).rounded())
    let unit = Int64(scale)
    let whole = String(scaled / unit)
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard digits > 0 else { return sign + whole }
    let fraction = String(scaled % unit)
    return sign + whole + "." + String(repeating: "0", count: digits - fraction.count) + fraction
}
