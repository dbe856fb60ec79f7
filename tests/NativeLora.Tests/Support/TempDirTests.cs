namespace NativeLora.Tests.Support;

/// <summary>A fixture whose every test gets a fresh temporary directory, <see cref="Dir"/>, removed with all it holds afterwards.</summary>
public abstract class TempDirTests
{
    protected string Dir { get; private set; } = null!;

    [SetUp]
    public void MakeDir() => Dir = Directory.CreateTempSubdirectory($"nl-{GetType().Name}-").FullName;

    [TearDown]
    public void RemoveDir() => Directory.Delete(Dir, true);
}
