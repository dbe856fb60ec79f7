using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

public class LossPlotTests : TempDirTests
{
    [Test]
    public void WritesAPng()
    {
        var path = Path.Combine(Dir, "loss.png");
        var h = Enumerable.Range(1, 20).Select(i => new StepMetrics(i, 0, 3.0 / i, i % 5 == 0 ? 3.2 / i : null, 1e-4, 1, 100, 0, 10, false, i, 20)).ToList();
        LossPlot.Write(path, h);
        var bytes = File.ReadAllBytes(path);
        Assert.That(bytes.Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }));
        Assert.That(bytes.Length, Is.GreaterThan(5000));
    }
}
