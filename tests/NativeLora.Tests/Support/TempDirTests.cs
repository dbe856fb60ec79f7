namespace NativeLora.Tests.Support;

/// <summary>A fixture whose every test gets a fresh temporary directory, <see cref="Dir"/>, removed with all it holds afterwards.</summary>
public abstract class TempDirTests
{
    protected string Dir { get; private set; } = null!;

    [SetUp]
    public void MakeDir() => Dir = Directory.CreateTempSubdirectory($"nl-{GetType().Name}-").FullName;

    [TearDown]
    public void RemoveDir() => Directory.Delete(Dir, true);

    /// <summary>Writes bytes to a file of that name in <see cref="Dir"/>; returns its path.</summary>
    protected string WriteFile(string name, byte[] bytes)
    {
        string path = Path.Combine(Dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
