using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace NativeLora.Bench;

/// <summary>A "GFLOP/s" (or "GB/s") column computed from the mean time and the benchmark's own work count.</summary>
public sealed class RateColumn(string name, Func<BenchmarkCase, double> work) : IColumn
{
    public string Id => "Rate." + name;
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => $"{name} computed from the mean time";
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics == null) return "NA";
        double seconds = report.ResultStatistics.Mean / 1e9;
        return (work(benchmarkCase) / seconds / 1e9).ToString("F2");
    }

    public static IReadOnlyDictionary<string, object> Params(BenchmarkCase c) =>
        c.Parameters.Items.ToDictionary(p => p.Name, p => p.Value);
}
