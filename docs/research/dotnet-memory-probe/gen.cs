using System;
using System.Collections.Generic;
using System.Threading;
namespace GenNs {
  public struct MyPoint { public int X; public int Y; }
  public class MyRef { public int V; }
  public static class Program {
    public static void Main() {
      Console.WriteLine("PID " + System.Diagnostics.Process.GetCurrentProcess().Id);
      var a = new List<MyPoint>(); var b = new Dictionary<MyPoint, MyRef>(); var c = new List<MyRef>();
      long s = 0;
      for (int r = 0; ; r++) {
        for (int i = 0; i < 100000; i++) { a.Add(new MyPoint { X = i, Y = r }); b[new MyPoint{X=i&1023}] = null; c.Add(null); }
        foreach (var p in a) s += p.X;
        a.Clear(); c.Clear();
        if (r % 20 == 0) Console.WriteLine("r " + r + " " + s);
        Thread.Sleep(1);
      }
    }
  }
}
