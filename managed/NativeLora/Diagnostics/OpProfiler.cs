using System.Diagnostics;
using NativeLora.Devices;

namespace NativeLora.Diagnostics;

/// <summary>
/// Wall time per op family, for finding the largest costs (NATIVELORA_PROFILE=1 or Enabled = true).
/// When on, each scope synchronises the device at its start and end so the time is the op's own;
/// when off, a scope costs one branch.
/// </summary>
public static class OpProfiler
{
    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("NATIVELORA_PROFILE") == "1";
    private static readonly Dictionary<string, (double Ms, long Calls)> s_totals = new();
    private static readonly object s_lock = new();

    public readonly struct Scope : IDisposable
    {
        private readonly string? _name;
        private readonly ComputeDevice? _device;
        private readonly long _start;

        internal Scope(string name, ComputeDevice device)
        {
            _name = name;
            _device = device;
            device.Synchronize();
            _start = Stopwatch.GetTimestamp();
        }

        public void Dispose()
        {
            if (_name == null) return;
            _device!.Synchronize();
            double ms = Stopwatch.GetElapsedTime(_start).TotalMilliseconds;
            lock (s_lock)
            {
                var (t, c) = s_totals.GetValueOrDefault(_name);
                s_totals[_name] = (t + ms, c + 1);
            }
        }
    }

    public static Scope Time(string name, ComputeDevice device) => Enabled ? new Scope(name, device) : default;

    public static IReadOnlyList<(string Name, double Ms, long Calls)> Totals()
    {
        lock (s_lock) return s_totals.OrderByDescending(kv => kv.Value.Ms).Select(kv => (kv.Key, kv.Value.Ms, kv.Value.Calls)).ToList();
    }

    public static void Reset()
    {
        lock (s_lock) s_totals.Clear();
    }

    public static string Report()
    {
        var t = Totals();
        double total = t.Sum(x => x.Ms);
        return string.Join("\n", t.Select(x => $"{x.Name,-28} {x.Ms,10:F1} ms {100 * x.Ms / Math.Max(total, 1e-9),6:F1}%  {x.Calls,8} calls"));
    }
}
